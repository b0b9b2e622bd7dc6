/* cli.h - what the nvtpm command's files share: exit codes, messages,
 * option helpers. */
#ifndef NVTPM_CLI_H
#define NVTPM_CLI_H

#include <stdbool.h>
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

/* The exit code of a failure of the layers below: err's status where it is
 * set, else code (a negative errno) where nvram.h reserves it for one
 * meaning, else CLI_EXIT_ERROR. err may be NULL. */
int cli_exit_code(const struct nv_error *err, int code);

/* Print "nvtpm: MESSAGE" on one line to stderr and return code. */
int cli_fail(int code, const char *fmt, ...) NV_PRINTF(2, 3);

/* "nvtpm CMD: unknown or malformed option 'OPT'; run 'nvtpm CMD --help'", code 1. */
int cli_usage_error(const char *cmd, const char *opt);

/* getopt's last case in a command whose parser returns -1 for --help: 'h'
 * prints usage and returns -1 (stop, exit 0); anything else is
 * cli_usage_error's. */
int cli_help_or_usage_error(const char *cmd, int c, const char *usage, char **argv);

/* After getopt: the one image argument that check, info, create, key,
 * encrypt, import and export take. NULL when *r is already set (an option's
 * error, printed) or when there is not exactly one argument left (then *r is
 * the usage exit code, the message printed). */
const char *cli_one_image(const char *cmd, int argc, char **argv, int *r);

/* Sizes with k, M, G, T suffixes (powers of 1024). */
int cli_parse_size(const char *text, uint64_t *out);

/* Parse a --key/--new-key value; returns an exit code (0 on success). */
int cli_parse_key(const char *option, const char *spec, struct nvram_key *key);

/* --cipher aes-256-gcm|aes-128-gcm; returns an exit code (0 on success). */
int cli_parse_cipher(const char *name, enum nvram_cipher *cipher);

/* Create the qcow2 image img (never over an existing file; mode 0: 0600) and
 * format its NVRAM with opts; *out is left open, owned. On failure the new
 * file is removed and the exit code returned (the message printed). */
int cli_make_image(const char *img, uint64_t size, uint32_t cluster, unsigned mode,
                   const struct nvram_options *opts, struct bdrv_node **out);

/* An import of swtpm's state folder into a new image: `nvtpm import`, and
 * `nvtpm socket --tpmstate dir=` on a folder that holds swtpm's files. */
struct cli_import {
    const char *cmd; /* the messages' prefix */
    const char *dir, *img;
    int tpm_version;                 /* 0: the version whose files dir holds */
    const struct nvram_key *key;     /* swtpm's key for its files, or NULL */
    const struct nvram_key *new_key; /* the image's, if not key's, or NULL */
    bool key_encrypts_plain;         /* key with plain files: the image is encrypted with it
                                      * (socket: swtpm would encrypt them) instead of exit 6 */
    uint64_t size;
    enum nvram_cipher cipher;
    unsigned mode;   /* the image's file mode; 0: the default */
    bool quiet;      /* no summary line on standard output */
    bool dir_locked; /* the caller holds dir/.lock (socket): no check for a swtpm on it */
};
/* Read and check everything (lock, files, keys, libtpms) before writing;
 * the image is written as IMG.importing and linked to IMG only once complete
 * and durable, so IMG never exists half made. Returns an exit code, the
 * message printed. */
int cli_import_dir(const struct cli_import *req);

/* socket-dir.c: what `--tpmstate dir=DIR` serves, decided with DIR/.lock
 * held: the image img alone or with older swtpm files (CLI_DIR_IMAGE), swtpm's
 * files alone (CLI_DIR_SWTPM: to import), neither (CLI_DIR_NEW). swtpm files
 * newer than the image return CLI_EXIT_USAGE, the message naming both. */
enum cli_dir_state { CLI_DIR_NEW, CLI_DIR_IMAGE, CLI_DIR_SWTPM };
struct mig_dir_files;
int cli_dir_inspect(const char *dir, const char *img, int tpm_version, enum cli_dir_state *state,
                    struct mig_dir_files *files);
/* Import swtpm's files in dir into the new image img (an interrupted
 * import's leftovers removed first). A line on log_fd (after log_prefix) says
 * what happened. */
int cli_dir_import(const char *dir, const char *img, int tpm_version, const struct nvram_key *key,
                   unsigned mode, int log_fd, const char *log_prefix);

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
