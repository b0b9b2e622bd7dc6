/* nvram-io.c - drive the NVRAM store from scripts, like nvtpm-io drives the
 * block layer. Built in tests/, not installed.
 *
 *   nvram-io [--key KEY] [--tpm2|--tpm1.2] [--format] [--no-sync] [-r]
 *            [--lock-timeout MS] -c CMD [-c CMD ...] SPEC
 *
 * SPEC is any block-layer spec (a path, faults:RULES:PATH). --format formats a
 * blank image on open. Commands:
 *   store BLOB -P BYTE LEN | store BLOB FILE     commit a blob
 *   load BLOB [-P BYTE LEN | FILE]               load (and check, or save) it
 *   absent BLOB                                  fail unless the blob is absent
 *   delete BLOB                                  delete it
 *   hold-shared MS                               hold the shared access lock MS
 *   sleep MS | echo TEXT
 * The first failing command prints its error and exits with 1 (or the exit
 * code nvtpm would use for the open: 2 corrupt, 4 key missing, 5 wrong key,
 * 6 key not needed, 7 busy). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nvram.h"

static int exit_for(int e)
{
    switch (-e) {
    case EUCLEAN:
    case ENOMEDIUM:
    case ENODATA:
    case EMSGSIZE:
        return 2;
    case ENOKEY:
        return 4;
    case EKEYREJECTED:
        return 5;
    case EKEYREVOKED:
        return 6;
    case EAGAIN:
    case ETIMEDOUT:
    case EBUSY:
        return 7;
    case EMEDIUMTYPE:
        return 8;
    default:
        return 1;
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int read_file(const char *path, uint8_t **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    *data = malloc(n > 0 ? (size_t)n : 1);
    *len = *data ? fread(*data, 1, (size_t)n, f) : 0;
    fclose(f);
    return *data ? 0 : -ENOMEM;
}

static int blob_arg(const char *name, enum nvram_blob *blob, struct nv_error *err)
{
    int b = name ? nvram_blob_by_name(name) : -ENOENT;
    if (b < 0)
        return nv_error_set(err, -EINVAL, "unknown blob '%s'", name ? name : "");
    *blob = (enum nvram_blob)b;
    return 0;
}

/* "-P BYTE LEN" fills a buffer; a file name reads one. */
static int payload(char **argv, int argc, uint8_t **data, size_t *len, int *pattern)
{
    *pattern = -1;
    if (argc == 3 && strcmp(argv[0], "-P") == 0) {
        *pattern = (int)strtol(argv[1], NULL, 0);
        *len = strtoul(argv[2], NULL, 0);
        *data = malloc(*len ? *len : 1);
        if (*data)
            memset(*data, *pattern, *len);
        return *data ? 0 : -ENOMEM;
    }
    return argc == 1 ? read_file(argv[0], data, len) : -EINVAL;
}

static int run(struct nvram *nv, struct bdrv_node *bs, char *line, struct nv_error *err)
{
    char *argv[8];
    int argc = 0;
    for (char *t = strtok(line, " "); t && argc < 8; t = strtok(NULL, " "))
        argv[argc++] = t;
    enum nvram_blob blob = NVRAM_PERMALL;
    uint8_t *data = NULL;
    size_t len = 0;
    int pattern, r;
    if (argc == 0)
        return nv_error_set(err, -EINVAL, "empty command");
    if (strcmp(argv[0], "sleep") == 0 && argc == 2) {
        sleep_ms(atol(argv[1]));
        return 0;
    }
    if (strcmp(argv[0], "echo") == 0) {
        printf("%s\n", argc > 1 ? argv[1] : "");
        fflush(stdout);
        return 0;
    }
    if (strcmp(argv[0], "hold-shared") == 0 && argc == 2) {
        if ((r = bdrv_lock(bs, BDRV_LOCK_SHARED, 10000, err)) < 0)
            return r;
        printf("holding\n");
        fflush(stdout);
        sleep_ms(atol(argv[1]));
        return bdrv_unlock(bs, err);
    }
    if ((r = blob_arg(argc > 1 ? argv[1] : NULL, &blob, err)) < 0)
        return r;
    if (strcmp(argv[0], "store") == 0) {
        if (payload(argv + 2, argc - 2, &data, &len, &pattern) < 0)
            return nv_error_set(err, -EINVAL, "store BLOB -P BYTE LEN | store BLOB FILE");
        r = nvram_store(nv, blob, data, len, err);
    } else if (strcmp(argv[0], "delete") == 0) {
        r = nvram_delete(nv, blob, err);
    } else if (strcmp(argv[0], "absent") == 0) {
        r = nvram_load(nv, blob, &data, &len, err);
        r = r == -ENOENT ? 0 : r < 0 ? r : nv_error_set(err, -EEXIST, "%s exists", argv[1]);
    } else if (strcmp(argv[0], "load") == 0) {
        uint8_t *want = NULL;
        size_t want_len = 0;
        bool check = argc == 5;
        if (check && payload(argv + 2, 3, &want, &want_len, &pattern) < 0)
            return nv_error_set(err, -EINVAL, "load BLOB [-P BYTE LEN | FILE]");
        r = nvram_load(nv, blob, &data, &len, err);
        if (r == 0 && check && (len != want_len || memcmp(data, want, len) != 0))
            r = nv_error_set(err, -EILSEQ, "%s: %zu bytes differ from the %zu expected", argv[1],
                             len, want_len);
        if (r == 0 && argc == 3) {
            FILE *f = fopen(argv[2], "wb");
            if (!f || fwrite(data, 1, len, f) != len)
                r = nv_error_set(err, -EIO, "cannot write %s", argv[2]);
            if (f)
                fclose(f);
        }
        if (r == 0)
            printf("%s: %zu bytes\n", argv[1], len);
        free(want);
    } else {
        return nv_error_set(err, -EINVAL, "unknown command '%s'", argv[0]);
    }
    free(data);
    return r;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"key", required_argument, NULL, 'k'},
                                       {"tpm2", no_argument, NULL, '2'},
                                       {"tpm1.2", no_argument, NULL, '1'},
                                       {"format", no_argument, NULL, 'f'},
                                       {"no-sync", no_argument, NULL, 's'},
                                       {"lock-timeout", required_argument, NULL, 't'},
                                       {NULL, 0, NULL, 0}};
    struct nvram_options opts = {0};
    struct nvram_key key;
    struct nv_error err = {0};
    char *cmds[64];
    int ncmds = 0, c;
    unsigned flags = BDRV_O_RDWR | BDRV_O_OWNER;
    bool have_key = false;
    while ((c = getopt_long(argc, argv, "c:r", lo, NULL)) != -1) {
        if (c == 'k') {
            if (nvram_key_parse(optarg, &key, &err) < 0) {
                fprintf(stderr, "nvram-io: %s\n", err.msg);
                return 1;
            }
            have_key = true;
        } else if (c == '2' || c == '1') {
            opts.tpm_version = c - '0';
        } else if (c == 'f') {
            opts.format_blank = true;
        } else if (c == 's') {
            opts.no_sync = true;
        } else if (c == 't') {
            opts.lock_timeout_ms = atoi(optarg);
        } else if (c == 'r') {
            flags = 0;
        } else if (c == 'c' && ncmds < 64) {
            cmds[ncmds++] = optarg;
        } else {
            fprintf(stderr, "nvram-io: bad option (see the source)\n");
            return 1;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "nvram-io: need one image SPEC\n");
        return 1;
    }
    opts.key = have_key ? &key : NULL;
    struct bdrv_node *bs = bdrv_open(argv[optind], flags, NULL, &err);
    struct nvram *nv = bs ? nvram_open(bs, &opts, &err) : NULL;
    if (have_key)
        nvram_key_wipe(&key);
    int status = nv ? 0 : exit_for(err.code);
    if (!nv)
        fprintf(stderr, "nvram-io: %s\n", err.msg);
    for (int i = 0; nv && i < ncmds && status == 0; i++) {
        char line[512];
        snprintf(line, sizeof(line), "%s", cmds[i]);
        if (run(nv, bs, line, &err) < 0) {
            fprintf(stderr, "nvram-io: %s: %s\n", cmds[i], err.msg);
            status = 1;
        }
    }
    nvram_close(nv);
    if (bs)
        bdrv_close(bs);
    return status;
}
