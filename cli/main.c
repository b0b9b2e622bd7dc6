/* main.c - the nvtpm command: dispatches to one subcommand per use.
 *
 * Exit codes common to every subcommand: 0 success, 1 usage error (unknown
 * subcommand or option). Subcommands document their own codes above 1. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <libtpms/tpm_library.h>

#include "cli.h"

#define EXIT_USAGE CLI_EXIT_USAGE

struct subcommand {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
};

/* Later subcommands (socket, validate, create, info, ...) join this table. */
static const struct subcommand subcommands[] = {
    {"check", "check an image's structure like qemu-img check (--repair)", cmd_check},
    {NULL, NULL, NULL},
};

int cli_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("nvtpm: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

int cli_usage_error(const char *cmd, const char *opt)
{
    return cli_fail(CLI_EXIT_USAGE, "%s: unknown or malformed option '%s'; run 'nvtpm %s --help'",
                    cmd, opt, cmd);
}

static void print_version(void)
{
    uint32_t v = TPMLIB_GetVersion();
    printf("nvtpm %s (libtpms %u.%u.%u)\n", NVTPM_VERSION, (v >> 16) & 0xff, (v >> 8) & 0xff,
           v & 0xff);
}

static void print_help(void)
{
    printf("Usage: nvtpm COMMAND [OPTIONS]\n"
           "       nvtpm --help | --version\n"
           "\n"
           "An emulated TPM for virtual machines, built on libtpms, that keeps the TPM's\n"
           "state in a QCoW2 image.\n"
           "\n"
           "Commands:\n");
    if (!subcommands[0].name)
        printf("  (none yet in this version)\n");
    for (const struct subcommand *c = subcommands; c->name; c++)
        printf("  %-12s %s\n", c->name, c->summary);
    printf("\n"
           "Options:\n"
           "  -h, --help     show this help and exit\n"
           "  -V, --version  show the version of nvtpm and libtpms and exit\n"
           "\n"
           "Exit codes: 0 success, 1 usage error; each command documents its others.\n"
           "See nvtpm(1).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "nvtpm: no command given; run 'nvtpm --help'\n");
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        print_help();
        return 0;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        print_version();
        return 0;
    }
    for (const struct subcommand *c = subcommands; c->name; c++)
        if (strcmp(cmd, c->name) == 0)
            return c->run(argc - 1, argv + 1);
    if (cmd[0] == '-')
        fprintf(stderr, "nvtpm: unknown option '%s'; run 'nvtpm --help'\n", cmd);
    else
        fprintf(stderr, "nvtpm: unknown command '%s'; run 'nvtpm --help'\n", cmd);
    return EXIT_USAGE;
}
