/* cli.h: the `colorize` command line tool's subcommands (one file each) and shared helpers.
 * Single-threaded; every command returns the process exit status (0 ok, 1 some work failed,
 * 2 usage error). Tested end to end by tests/cli/test_cli.sh. */
#ifndef CZ_CLI_H
#define CZ_CLI_H

#include "config.h"

int cz_cmd_colorize(int argc, char **argv);
int cz_cmd_inspect(int argc, char **argv);
int cz_cmd_init(int argc, char **argv);
int cz_cmd_bench(int argc, char **argv);
int cz_cmd_train(int argc, char **argv);

/* Loads defaults, COLORIZE_CONFIG (or `path` when not NULL), then the environment. Prints the
 * error and returns non-zero on failure. */
int cli_load_config(cz_config *cfg, const char *path);
/* Parses a comma-separated list of positive integers ("1,8,32"); returns count or -1. */
int cli_parse_int_list(const char *s, int *out, int cap);

/* Progress bar on a terminal (no-op when stderr is not a TTY). */
typedef struct cli_progress {
    int enabled, total, done, failed;
    double t0;
} cli_progress;
void cli_progress_start(cli_progress *p, int total);
void cli_progress_step(cli_progress *p, int ok);
void cli_progress_end(cli_progress *p);
double cli_now(void);

#endif
