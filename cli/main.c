/* main.c - the nvtpm command: dispatches to one subcommand per use.
 *
 * Exit codes common to every subcommand: 0 success, 1 usage error (unknown
 * subcommand or option). Subcommands document their own codes above 1. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

#include "cli.h"
#include "tpm.h"

#define EXIT_USAGE CLI_EXIT_USAGE

struct subcommand {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
};

/* Later subcommands (socket, validate, create, info, ...) join this table. */
static const struct subcommand subcommands[] = {
    {"socket", "serve a TPM over swtpm's socket protocols, its state in a QCoW2 image", cmd_socket},
    {"validate", "migration dry run: can this host load this TPM state image, now?", cmd_validate},
    {"import", "make an image from swtpm's state folder (its files plain or encrypted)",
     cmd_import},
    {"export", "write an image's TPM state as swtpm's state files, for swtpm to run on",
     cmd_export},
    {"create", "create a QCoW2 image holding an empty TPM NVRAM (--key: encrypted)", cmd_create},
    {"info", "show an image's NVRAM: TPM version, encryption, key slots, blobs, locks", cmd_info},
    {"check", "check an image's qcow2 structure and NVRAM (--repair: leaks)", cmd_check},
    {"key", "list, add or remove the key slots of an encrypted image", cmd_key},
    {"encrypt", "encrypt a plain image's TPM state (crash-safe)", cmd_encrypt},
    {NULL, NULL, NULL},
};

int cli_parse_size(const char *text, uint64_t *out)
{
    char digits[32];
    size_t n = strspn(text, "0123456789");
    unsigned shift = 0;
    if (n == 0 || n >= sizeof(digits))
        return -EINVAL;
    if (text[n]) {
        const char *units = "kMGT", *u = strchr(units, text[n] == 'K' ? 'k' : text[n]);
        if (!u || text[n + 1])
            return -EINVAL;
        shift = 10 * (unsigned)(u - units + 1);
    }
    memcpy(digits, text, n);
    digits[n] = '\0';
    uint64_t v;
    if (nv_parse_u64(digits, UINT64_MAX >> shift, &v) < 0)
        return -ERANGE;
    *out = v << shift;
    return 0;
}

int cli_parse_key(const char *option, const char *spec, struct nvram_key *key)
{
    struct nv_error err = {0};
    /* A process that holds key material is not dumpable, from before the key
     * is read: no core dump of it (the key, or the image's data key, would be
     * in it), no ptrace or /proc/PID/mem by its user. Only then: a process
     * without a key holds nothing its image does not hold in the clear, and
     * stays open to gdb and to /proc/PID/fd readers of its user. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return cli_fail(CLI_EXIT_ERROR, "%s: cannot keep the key out of core dumps: %s", option,
                        strerror(errno));
    int r = nvram_key_parse(spec, key, &err);
    if (r < 0)
        return cli_fail(nv_error_status(&err) == NV_STATUS_USAGE ? CLI_EXIT_USAGE : CLI_EXIT_ERROR,
                        "%s: %s", option, err.msg);
    return 0;
}

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

int cli_help_or_usage_error(const char *cmd, int c, const char *usage, char **argv)
{
    if (c == 'h')
        return fputs(usage, stdout), -1;
    return cli_usage_error(cmd, argv[optind - 1]);
}

const char *cli_one_image(const char *cmd, int argc, char **argv, int *r)
{
    if (*r != 0)
        return NULL;
    if (optind != argc - 1) {
        *r = cli_fail(CLI_EXIT_USAGE, "%s: give exactly one image (see nvtpm %s --help)", cmd, cmd);
        return NULL;
    }
    return argv[optind];
}

static void print_version(void)
{
    printf("nvtpm %s (libtpms %s)\n", NVTPM_VERSION, tpm_libtpms_version());
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
           "Run 'nvtpm COMMAND --help' for a command's options.\n"
           "\n"
           "Exit codes: 0 success, 1 usage error, 2 corrupt or not an nvtpm image,\n"
           "4 key missing, 5 wrong key, 6 key given for an unencrypted image, 7 busy\n"
           "(held by another process), 8 not loadable here, 9 other error; check uses\n"
           "qemu-img check's codes (1 error, 2 corruption, 3 leaks). See nvtpm(1).\n");
}

/* swtpm's chardev and cuse interfaces: swtpm's own words for what it lacks,
 * which its tests look for. */
static int unsupported_interface(const char *prog, const char *cmd)
{
    return cli_fail(EXIT_USAGE,
                    "%s: Unsupported TPM interface: nvtpm serves `socket` only (not chardev or "
                    "cuse); run '%s --help'",
                    cmd, prog);
}

/* Run as "swtpm" (the compatibility directory's link, docs/libvirt.md): swtpm's
 * command line, of which nvtpm serves `swtpm socket`. */
static int main_as_swtpm(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "socket") == 0)
        return cmd_socket(argc - 1, argv + 1);
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-v") == 0) {
        printf("nvtpm %s (libtpms %s), serving as swtpm\n", NVTPM_VERSION, tpm_libtpms_version());
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        printf("Usage: swtpm socket [OPTIONS]\n"
               "\n"
               "This is nvtpm standing in for swtpm: `swtpm socket` runs `nvtpm socket`,\n"
               "which takes swtpm's options and keeps the TPM's state in a QCoW2 image\n"
               "(with --tpmstate dir=DIR: DIR/tpm-00.qcow2; swtpm's files found there are\n"
               "imported). Run 'swtpm socket --help' for the options, see docs/libvirt.md.\n");
        return 0;
    }
    return unsupported_interface("swtpm", cmd);
}

int main(int argc, char **argv)
{
    const char *slash = argc > 0 ? strrchr(argv[0], '/') : NULL;
    if (argc > 0 && strcmp(slash ? slash + 1 : argv[0], "swtpm") == 0)
        return main_as_swtpm(argc, argv);
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
    if (strcmp(cmd, "chardev") == 0 || strcmp(cmd, "cuse") == 0)
        return unsupported_interface("nvtpm", cmd);
    if (cmd[0] == '-')
        fprintf(stderr, "nvtpm: unknown option '%s'; run 'nvtpm --help'\n", cmd);
    else
        fprintf(stderr, "nvtpm: unknown command '%s'; run 'nvtpm --help'\n", cmd);
    return EXIT_USAGE;
}
