/* cmd-nvram.c - `nvtpm create`, `nvtpm key` and `nvtpm encrypt`: making an
 * image and managing its keys. Every key check happens before anything is
 * written; a failing command leaves the image as it was. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "block.h"
#include "cli.h"
#include "nvram.h"

static const char create_usage[] =
    "Usage: nvtpm create IMG [--size SIZE] [--tpm2|--tpm1.2] [--key KEY]\n"
    "                        [--cipher aes-256-gcm|aes-128-gcm] [--cluster-size N]\n"
    "\n"
    "Create a QCoW2 image IMG (never over an existing file) holding an empty TPM\n"
    "NVRAM (docs/nvram-format.md).\n"
    "\n"
    "  --size SIZE        virtual size, k/M/G suffixes (default 4M; at least 2240k)\n"
    "  --tpm2, --tpm1.2   the TPM version the state is for (default TPM 2.0)\n"
    "  --key KEY          encrypt with this key: file=PATH|fd=N (raw 128/256-bit key,\n"
    "                     format=hex|binary) or pwdfile=PATH|pwdfd=N (passphrase,\n"
    "                     iterations=N, default 600000), as swtpm's --key\n"
    "  --cipher NAME      aes-256-gcm (default) or aes-128-gcm\n"
    "  --cluster-size N   qcow2 cluster size, 512 to 2M (default 64k)\n";

int cli_parse_cipher(const char *name, enum nvram_cipher *cipher)
{
    if (strcmp(name, "aes-256-gcm") == 0)
        *cipher = NVRAM_CIPHER_AES256_GCM;
    else if (strcmp(name, "aes-128-gcm") == 0)
        *cipher = NVRAM_CIPHER_AES128_GCM;
    else
        return cli_fail(CLI_EXIT_USAGE, "--cipher %s: aes-256-gcm or aes-128-gcm", name);
    return 0;
}

int cli_make_image(const char *img, uint64_t size, uint32_t cluster, unsigned mode,
                   const struct nvram_options *opts, struct bdrv_node **out)
{
    struct nv_error err = {0};
    struct bdrv_create_opts co = {
        .size = size, .cluster_size = cluster, .mode = mode, .prealloc = NVRAM_MIN_DISK_SIZE};
    int r = bdrv_create("qcow2", img, &co, &err);
    if (r < 0)
        return cli_fail(r == -EEXIST ? CLI_EXIT_USAGE : cli_exit_code(&err, r), "%s", err.msg);
    struct bdrv_node *bs = bdrv_open_format("qcow2", img, BDRV_O_RDWR | BDRV_O_OWNER, NULL, &err);
    struct nvram_options made = *opts;
    made.just_created = true;
    r = bs ? nvram_format(bs, &made, &err) : err.code;
    if (r < 0) {
        if (bs)
            bdrv_close(bs);
        unlink(img); /* ours, just made: nothing of anyone's is lost */
        return cli_fail(cli_exit_code(&err, r), "%s", err.msg);
    }
    *out = bs;
    return CLI_EXIT_OK;
}

static int create_image(const char *img, uint64_t size, uint32_t cluster,
                        const struct nvram_options *opts)
{
    struct bdrv_node *bs = NULL;
    int code = cli_make_image(img, size, cluster, 0, opts, &bs);
    if (code)
        return code;
    bdrv_close(bs);
    printf("Created %s: TPM %s NVRAM in a %llu-byte qcow2 image, %s\n", img,
           opts->tpm_version == 2 ? "2.0" : "1.2", (unsigned long long)size,
           opts->key ? nvram_cipher_name(opts->cipher) : "not encrypted");
    return CLI_EXIT_OK;
}

int cmd_create(int argc, char **argv)
{
    static const struct option lo[] = {
        {"size", required_argument, NULL, 's'},   {"tpm2", no_argument, NULL, '2'},
        {"tpm1.2", no_argument, NULL, '1'},       {"key", required_argument, NULL, 'k'},
        {"cipher", required_argument, NULL, 'c'}, {"cluster-size", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    struct nvram_options opts = {.tpm_version = 2, .cipher = NVRAM_CIPHER_AES256_GCM};
    struct nvram_key key;
    uint64_t size = NVRAM_DEFAULT_IMAGE_SIZE, cluster = 0;
    int c, r = 0;
    bool have_key = false;
    optind = 1;
    opterr = 0;
    while (r == 0 && (c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 's':
            if (cli_parse_size(optarg, &size) < 0)
                r = cli_fail(CLI_EXIT_USAGE, "create: --size %s is not a size", optarg);
            break;
        case 'C':
            if (cli_parse_size(optarg, &cluster) < 0 || cluster > (2u << 20))
                r = cli_fail(CLI_EXIT_USAGE, "create: --cluster-size %s", optarg);
            break;
        case '2':
        case '1':
            opts.tpm_version = c - '0';
            break;
        case 'k':
            if ((r = cli_parse_key("--key", optarg, &key)) == 0)
                have_key = true;
            break;
        case 'c':
            r = cli_parse_cipher(optarg, &opts.cipher);
            break;
        case 'h':
            fputs(create_usage, stdout);
            return 0;
        default:
            r = cli_usage_error("create", argv[optind - 1]);
        }
    }
    const char *img = cli_one_image("create", argc, argv, &r);
    if (r == 0 && size < NVRAM_MIN_DISK_SIZE)
        r = cli_fail(CLI_EXIT_USAGE,
                     "create: --size %llu is too small for a TPM's NVRAM (at "
                     "least %u bytes)",
                     (unsigned long long)size, NVRAM_MIN_DISK_SIZE);
    opts.key = have_key ? &key : NULL;
    if (r == 0)
        r = create_image(img, size, (uint32_t)cluster, &opts);
    if (have_key)
        nvram_key_wipe(&key);
    return r;
}

/* ---- key and encrypt ------------------------------------------------------------- */

static const char key_usage[] =
    "Usage: nvtpm key list IMG [--json]\n"
    "       nvtpm key add IMG --key KEY --new-key KEY\n"
    "       nvtpm key remove IMG --key KEY [--slot N]\n"
    "\n"
    "Manage the key slots of an encrypted image: each wraps the data key under one\n"
    "key (a raw key or a passphrase), so keys change without rewriting the state.\n"
    "--key unlocks (any slot's key); remove takes away the slot --key opens, or\n"
    "slot N. The last slot cannot be removed. KEY: see nvtpm create --help.\n";

static const char encrypt_usage[] =
    "Usage: nvtpm encrypt IMG --new-key KEY [--cipher aes-256-gcm|aes-128-gcm]\n"
    "\n"
    "Encrypt the TPM state of a plain image under a new data key wrapped by KEY.\n"
    "Crash-safe: a crash at any point leaves a loadable image; running the command\n"
    "again with the same KEY finishes the job.\n";

struct key_args {
    const char *img;
    struct nvram_key key, new_key;
    bool have_key, have_new_key, json;
    int slot;
    enum nvram_cipher cipher;
};

static int parse_key_args(const char *cmd, int argc, char **argv, struct key_args *a,
                          const char *usage)
{
    static const struct option lo[] = {{"key", required_argument, NULL, 'k'},
                                       {"new-key", required_argument, NULL, 'n'},
                                       {"slot", required_argument, NULL, 's'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"cipher", required_argument, NULL, 'c'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    int c, r = 0;
    uint64_t n;
    a->slot = -1;
    a->cipher = NVRAM_CIPHER_AES256_GCM;
    optind = 1;
    opterr = 0;
    while (r == 0 && (c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'k':
            r = a->have_key ? cli_fail(CLI_EXIT_USAGE, "%s: --key given twice", cmd)
                            : cli_parse_key("--key", optarg, &a->key);
            a->have_key = r == 0;
            break;
        case 'n':
            r = a->have_new_key ? cli_fail(CLI_EXIT_USAGE, "%s: --new-key given twice", cmd)
                                : cli_parse_key("--new-key", optarg, &a->new_key);
            a->have_new_key = r == 0;
            break;
        case 's':
            if (nv_parse_u64(optarg, NVRAM_KEY_SLOTS - 1, &n) < 0)
                r = cli_fail(CLI_EXIT_USAGE, "%s: --slot %s (0 to %d)", cmd, optarg,
                             NVRAM_KEY_SLOTS - 1);
            a->slot = (int)n;
            break;
        case 'j':
            a->json = true;
            break;
        case 'c':
            r = cli_parse_cipher(optarg, &a->cipher);
            break;
        default:
            r = cli_help_or_usage_error(cmd, c, usage, argv);
        }
    }
    a->img = cli_one_image(cmd, argc, argv, &r);
    return r;
}

static void wipe_key_args(struct key_args *a)
{
    nvram_key_wipe(&a->key);
    nvram_key_wipe(&a->new_key);
}

static struct bdrv_node *open_owned(const char *img, int *code)
{
    struct nv_error err = {0};
    struct bdrv_node *bs = bdrv_open(img, BDRV_O_RDWR | BDRV_O_OWNER, NULL, &err);
    if (!bs)
        *code = cli_fail(cli_exit_code(&err, err.code), "%s", err.msg);
    return bs;
}

static int key_change(const char *what, struct key_args *a)
{
    struct nv_error err = {0};
    int code = 0;
    if (!a->have_key)
        return cli_fail(CLI_EXIT_USAGE, "key %s: --key is needed to unlock the image", what);
    if (strcmp(what, "add") == 0 && !a->have_new_key)
        return cli_fail(CLI_EXIT_USAGE, "key add: --new-key names the key to add");
    struct bdrv_node *bs = open_owned(a->img, &code);
    if (!bs)
        return code;
    struct nvram_options opts = {.key = &a->key};
    struct nvram *nv = nvram_open(bs, &opts, &err);
    int r = nv ? 0 : err.code;
    if (nv && strcmp(what, "add") == 0) {
        r = nvram_key_add(nv, &a->new_key, &err);
        if (r >= 0)
            printf("Added key slot %d to %s\n", r, a->img);
    } else if (nv) {
        int slot = a->slot >= 0 ? a->slot : nvram_key_slot(nv);
        r = nvram_key_remove(nv, slot, &err);
        if (r == 0)
            printf("Removed key slot %d from %s\n", slot, a->img);
    }
    nvram_close(nv);
    bdrv_close(bs);
    return r < 0 ? cli_fail(r == -EPERM || r == -EEXIST || r == -ENOENT ? CLI_EXIT_USAGE
                                                                        : cli_exit_code(&err, r),
                            "%s", err.msg)
                 : CLI_EXIT_OK;
}

int cmd_info_keys(const char *img, bool json);

int cmd_key(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(key_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : 0;
    }
    const char *what = argv[1];
    if (strcmp(what, "list") && strcmp(what, "add") && strcmp(what, "remove"))
        return cli_fail(CLI_EXIT_USAGE, "key: unknown action '%s' (list, add or remove)", what);
    struct key_args a = {0};
    int r = parse_key_args("key", argc - 1, argv + 1, &a, key_usage);
    if (r == 0)
        r = strcmp(what, "list") == 0 ? cmd_info_keys(a.img, a.json) : key_change(what, &a);
    wipe_key_args(&a);
    return r < 0 ? 0 : r;
}

int cmd_encrypt(int argc, char **argv)
{
    struct key_args a = {0};
    int r = parse_key_args("encrypt", argc, argv, &a, encrypt_usage);
    if (r == 0 && !a.have_new_key)
        r = cli_fail(CLI_EXIT_USAGE, "encrypt: --new-key names the key to encrypt with");
    if (r == 0 && a.have_key)
        r = cli_fail(CLI_EXIT_USAGE, "encrypt: the image is not encrypted yet; give --new-key "
                                     "only");
    struct bdrv_node *bs = r == 0 ? open_owned(a.img, &r) : NULL;
    if (bs) {
        struct nv_error err = {0};
        struct nvram_options opts = {0};
        int e = nvram_encrypt(bs, &a.new_key, a.cipher, &opts, &err);
        bdrv_close(bs);
        if (e < 0)
            r = cli_fail(e == -EALREADY ? CLI_EXIT_USAGE : cli_exit_code(&err, e), "%s", err.msg);
        else
            printf("Encrypted %s (%s)\n", a.img, nvram_cipher_name(a.cipher));
    }
    wipe_key_args(&a);
    return r < 0 ? 0 : r;
}
