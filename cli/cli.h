/* cli.h - what the nvtpm command's files share: exit codes, messages. */
#ifndef NVTPM_CLI_H
#define NVTPM_CLI_H

#include "util.h"

#define CLI_EXIT_USAGE 1

/* Print "nvtpm: MESSAGE" on one line to stderr and return code. */
int cli_fail(int code, const char *fmt, ...) NV_PRINTF(2, 3);

/* "nvtpm CMD: unknown or malformed option 'OPT'; run 'nvtpm CMD --help'", code 1. */
int cli_usage_error(const char *cmd, const char *opt);

int cmd_check(int argc, char **argv);

#endif
