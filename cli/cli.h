/* cli.h - what the nvtpm command's files share: exit codes, messages,
 * option helpers. */
#ifndef NVTPM_CLI_H
#define NVTPM_CLI_H

#include <stdint.h>

#include "nvram.h"
#include "util.h"

/* Exit codes of every command (nvtpm(1)); `check` keeps qemu-img check's
 * meanings for 0 to 3 (1: the check could not run). */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_USAGE = 1,        /* bad command line */
    CLI_EXIT_CORRUPT = 2,      /* not an nvtpm NVRAM, damaged, too small */
    CLI_EXIT_LEAKS = 3,        /* check: leaked clusters only */
    CLI_EXIT_KEY_MISSING = 4,  /* the image is encrypted and no key was given */
    CLI_EXIT_KEY_WRONG = 5,    /* the key opens no key slot */
    CLI_EXIT_KEY_UNNEEDED = 6, /* a key was given for an unencrypted image */
    CLI_EXIT_BUSY = 7,         /* another process holds the image */
    CLI_EXIT_NOT_LOADABLE = 8, /* the state cannot be loaded here (TPM version, libtpms) */
    CLI_EXIT_ERROR = 9,        /* anything else: I/O, permissions, memory */
};

/* The exit code for a negative errno from the layers below. */
int cli_exit_code(int err);

/* Print "nvtpm: MESSAGE" on one line to stderr and return code. */
int cli_fail(int code, const char *fmt, ...) NV_PRINTF(2, 3);

/* "nvtpm CMD: unknown or malformed option 'OPT'; run 'nvtpm CMD --help'", code 1. */
int cli_usage_error(const char *cmd, const char *opt);

/* The version of the libtpms this process runs on, "MAJOR.MINOR.MICRO". */
const char *cli_libtpms_version(void);

/* Sizes with k, M, G, T suffixes (powers of 1024). */
int cli_parse_size(const char *text, uint64_t *out);

/* Parse a --key/--new-key value; returns an exit code (0 on success). */
int cli_parse_key(const char *option, const char *spec, struct nvram_key *key);

/* --cipher aes-256-gcm|aes-128-gcm; returns an exit code (0 on success). */
int cli_parse_cipher(const char *name, enum nvram_cipher *cipher);

#define CLI_DEFAULT_IMAGE_SIZE (4u << 20)

/* Create the qcow2 image img (never over an existing file) and format its
 * NVRAM with opts; *out is left open, owned. On failure the new file is
 * removed and the exit code returned (the message printed). */
int cli_make_image(const char *img, uint64_t size, uint32_t cluster,
                   const struct nvram_options *opts, struct bdrv_node **out);

int cmd_check(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_key(int argc, char **argv);
int cmd_encrypt(int argc, char **argv);
int cmd_socket(int argc, char **argv);
int cmd_validate(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_export(int argc, char **argv);

#endif
