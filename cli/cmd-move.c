/* cmd-move.c - `nvtpm import` and `nvtpm export`: a TPM's state between
 * swtpm's state folder (--tpmstate dir=D) and an nvtpm image. Everything is
 * read and checked before anything is written; import only makes a new image
 * and export only new files, so a failure leaves what was there. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block.h"
#include "cli.h"
#include "migration.h"
#include "nvram.h"
#include "tpm.h"

static const char import_usage[] =
    "Usage: nvtpm import IMG --from-dir DIR [--key KEY] [--new-key KEY]\n"
    "                        [--tpm2|--tpm1.2] [--size SIZE] [--cipher NAME]\n"
    "\n"
    "Make a new image IMG (never over an existing file) holding the TPM state that\n"
    "swtpm keeps in DIR (--tpmstate dir=DIR): tpm2-00.permall and, if there,\n"
    "tpm2-00.volatilestate and tpm2-00.savestate (tpm-00.* for TPM 1.2). The files\n"
    "are only read; a swtpm running on DIR makes import fail (busy). libtpms on\n"
    "this host must accept the state.\n"
    "\n"
    "  --from-dir DIR     swtpm's state folder\n"
    "  --key KEY          the key swtpm's files are encrypted with (swtpm's --key\n"
    "                     syntax); the image is encrypted with it too, unless\n"
    "                     --new-key is given\n"
    "  --new-key KEY      encrypt the image with this key (see nvtpm create --help)\n"
    "  --tpm2, --tpm1.2   which files to take when DIR holds both versions'\n"
    "  --size SIZE        the image's virtual size, k/M/G suffixes (default 4M)\n"
    "  --cipher NAME      aes-256-gcm (default) or aes-128-gcm\n"
    "\n"
    "Exit codes: 0 imported, 1 usage (IMG exists, DIR holds no state), 2 a state\n"
    "file is damaged, 4 the files are encrypted and --key is missing, 5 --key does\n"
    "not open them, 6 --key given for plain files (use --new-key), 7 busy (a\n"
    "running swtpm uses DIR), 8 libtpms here refuses the state, 9 other errors.\n";

static const char export_usage[] =
    "Usage: nvtpm export IMG --to-dir DIR [--key KEY] [--new-key KEY] [--replace]\n"
    "\n"
    "Write the TPM state of image IMG into DIR as swtpm's state files\n"
    "(tpm2-00.permall, tpm2-00.volatilestate, tpm2-00.savestate; tpm-00.* for\n"
    "TPM 1.2), so that `swtpm socket --tpmstate dir=DIR` runs on it. DIR is made\n"
    "if missing; state files already in it are kept unless --replace. IMG is only\n"
    "read, but held as its owner meanwhile: a server running on it makes export\n"
    "fail (busy) rather than copy state that is about to change.\n"
    "\n"
    "  --to-dir DIR       the folder for swtpm's state files\n"
    "  --key KEY          the key of an encrypted image; the files are encrypted\n"
    "                     with it in swtpm's format (give swtpm the same --key),\n"
    "                     unless --new-key is given\n"
    "  --new-key KEY      encrypt the files with this key instead (also for a\n"
    "                     plain image)\n"
    "  --replace          replace the state files of IMG's TPM version in DIR (the\n"
    "                     way back to swtpm for a folder nvtpm imported: see\n"
    "                     docs/libvirt.md); each file is replaced atomically\n"
    "\n"
    "Exit codes: 0 exported, 1 usage (DIR holds state files and no --replace, IMG\n"
    "holds no state),\n"
    "2 corrupt, 4 key missing, 5 key wrong, 6 --key given for a plain image,\n"
    "7 busy (a server owns IMG, or a running swtpm uses DIR), 9 other errors.\n";

struct move_args {
    const char *img, *dir;
    struct nvram_key key, new_key;
    bool have_key, have_new_key;
    int tpm_version;
    uint64_t size;
    enum nvram_cipher cipher;
    bool replace;
};

enum { O_DIR = 256, O_KEY, O_NEW_KEY, O_SIZE, O_CIPHER, O_REPLACE };

static const struct option import_options[] = {{"from-dir", required_argument, NULL, O_DIR},
                                               {"key", required_argument, NULL, O_KEY},
                                               {"new-key", required_argument, NULL, O_NEW_KEY},
                                               {"size", required_argument, NULL, O_SIZE},
                                               {"cipher", required_argument, NULL, O_CIPHER},
                                               {"tpm2", no_argument, NULL, '2'},
                                               {"tpm1.2", no_argument, NULL, '1'},
                                               {"help", no_argument, NULL, 'h'},
                                               {NULL, 0, NULL, 0}};

static const struct option export_options[] = {{"to-dir", required_argument, NULL, O_DIR},
                                               {"key", required_argument, NULL, O_KEY},
                                               {"new-key", required_argument, NULL, O_NEW_KEY},
                                               {"replace", no_argument, NULL, O_REPLACE},
                                               {"help", no_argument, NULL, 'h'},
                                               {NULL, 0, NULL, 0}};

static int parse(const char *cmd, const char *usage, int argc, char **argv, struct move_args *a)
{
    bool import = strcmp(cmd, "import") == 0;
    const struct option *lo = import ? import_options : export_options;
    int c, r = 0;
    optind = 1;
    opterr = 0;
    while (r == 0 && (c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case O_DIR:
            a->dir = optarg;
            break;
        case O_KEY:
            r = cli_parse_key("--key", optarg, &a->key);
            a->have_key = r == 0;
            break;
        case O_NEW_KEY:
            r = cli_parse_key("--new-key", optarg, &a->new_key);
            a->have_new_key = r == 0;
            break;
        case O_SIZE:
            if (cli_parse_size(optarg, &a->size) < 0 || a->size < NVRAM_MIN_DISK_SIZE)
                r = cli_fail(CLI_EXIT_USAGE, "%s: --size %s is not a size of at least %u bytes",
                             cmd, optarg, NVRAM_MIN_DISK_SIZE);
            break;
        case O_CIPHER:
            r = cli_parse_cipher(optarg, &a->cipher);
            break;
        case O_REPLACE:
            a->replace = true;
            break;
        case '2':
        case '1':
            a->tpm_version = c - '0';
            break;
        default:
            r = cli_help_or_usage_error(cmd, c, usage, argv);
        }
    }
    a->img = cli_one_image(cmd, argc, argv, &r);
    if (r == 0 && !a->dir)
        r = cli_fail(CLI_EXIT_USAGE, "%s: --%s names swtpm's state folder", cmd,
                     import ? "from-dir" : "to-dir");
    return r;
}

static void wipe_args(struct move_args *a)
{
    nvram_key_wipe(&a->key);
    nvram_key_wipe(&a->new_key);
}

static const char *present_blobs(const struct mig_state *st, char *out, size_t size)
{
    out[0] = '\0';
    for (int b = 0; b < NVRAM_BLOBS; b++)
        if (st->data[b])
            snprintf(out + strlen(out), size - strlen(out), "%s%s", out[0] ? ", " : "",
                     nvram_blob_name(b));
    return out;
}

/* ---- import ---------------------------------------------------------------------------- */

/* swtpm's files, decrypted and checked: nothing is written yet. */
static int read_swtpm_state(const struct cli_import *req, struct mig_state *st)
{
    struct nv_error err = {0};
    struct mig_key sk = {0};
    const char *cmd = req->cmd;
    if (!req->dir_locked && mig_dir_check_unused(req->dir, &err) < 0)
        return cli_fail(cli_exit_code(&err, err.code), "%s: %s; stop it first", cmd, err.msg);
    if (req->key && mig_key_from(req->key, &sk, &err) < 0)
        return cli_fail(CLI_EXIT_ERROR, "%s: --key: %s", cmd, err.msg);
    int r = mig_dir_read(req->dir, req->tpm_version, NULL, req->key ? &sk : NULL, st, &err);
    mig_key_wipe(&sk);
    if (r < 0)
        return cli_fail(r == -ENOENT ? CLI_EXIT_USAGE : cli_exit_code(&err, r), "%s: %s", cmd,
                        err.msg);
    int code = 0;
    if (!st->data[NVRAM_PERMALL])
        code = cli_fail(CLI_EXIT_USAGE,
                        "%s: %s has no %s-00.permall: without its permanent state there "
                        "is no TPM to import",
                        cmd, req->dir, st->tpm_version == 2 ? "tpm2" : "tpm");
    else if (req->key && !st->encrypted && !req->key_encrypts_plain)
        code = cli_fail(CLI_EXIT_KEY_UNNEEDED,
                        "%s: the state files in %s are not encrypted, --key is not "
                        "needed (--new-key encrypts the image)",
                        cmd, req->dir);
    if (code)
        mig_state_free(st);
    return code;
}

/* Would libtpms on this host start from this state? */
static int check_loadable(const struct cli_import *req, const struct mig_state *st)
{
    struct nv_error err = {0};
    struct tpm_backend_options bo = {.tpm_version = st->tpm_version, .debug_fd = -1};
    if (tpm_backend_init(&bo, &err) < 0)
        return cli_fail(CLI_EXIT_NOT_LOADABLE, "%s: %s", req->cmd, err.msg);
    uint32_t rc = tpm_backend_validate_state(st);
    if (rc) {
        return cli_fail(CLI_EXIT_NOT_LOADABLE,
                        "%s: libtpms %s refuses the TPM %s state in %s (TPM result 0x%x)", req->cmd,
                        tpm_libtpms_version(), st->tpm_version == 2 ? "2.0" : "1.2", req->dir, rc);
    }
    return 0;
}

/* The folder a path is in, synced (the link that made the image durable). */
static int sync_parent(const char *path, struct nv_error *err)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    return mig_sync_dir(slash ? dir : ".", err);
}

/* The blobs into the new image tmp, then tmp linked to the image's name. */
static int write_image(const struct cli_import *req, const struct mig_state *st, const char *tmp)
{
    const struct nvram_key *image_key = req->new_key                               ? req->new_key
                                        : st->encrypted || req->key_encrypts_plain ? req->key
                                                                                   : NULL;
    struct nvram_options opts = {
        .tpm_version = st->tpm_version, .key = image_key, .cipher = req->cipher};
    struct bdrv_node *bs = NULL;
    int code = cli_make_image(tmp, req->size, 0, req->mode, &opts, &bs);
    if (code)
        return code;
    struct nv_error err = {0};
    struct nvram *nv = nvram_open(bs, &opts, &err);
    int r = nv ? 0 : err.code;
    for (int b = 0; b < NVRAM_BLOBS && r == 0; b++)
        if (st->data[b])
            r = nvram_store(nv, b, st->data[b], st->len[b], &err);
    nvram_close(nv);
    bdrv_close(bs);
    if (r == 0 && link(tmp, req->img) < 0)
        r = nv_error_set(&err, -errno, "%s: %s", req->img, strerror(errno));
    unlink(tmp); /* made by this command a moment ago */
    if (r == 0)
        r = sync_parent(req->img, &err);
    if (r < 0)
        return cli_fail(r == -EEXIST ? CLI_EXIT_USAGE : cli_exit_code(&err, r), "%s: %s", req->cmd,
                        err.msg);
    char names[64];
    if (!req->quiet)
        printf("Imported the TPM %s state (%s) from %s into %s, %s\n",
               st->tpm_version == 2 ? "2.0" : "1.2", present_blobs(st, names, sizeof(names)),
               req->dir, req->img, image_key ? nvram_cipher_name(req->cipher) : "not encrypted");
    return CLI_EXIT_OK;
}

int cli_import_dir(const struct cli_import *req)
{
    struct mig_state st = {0};
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.importing", req->img) >= (int)sizeof(tmp))
        return cli_fail(CLI_EXIT_USAGE, "%s: %s: the name is too long", req->cmd, req->img);
    if (access(req->img, F_OK) == 0)
        return cli_fail(CLI_EXIT_USAGE, "%s: %s exists; import makes a new image", req->cmd,
                        req->img);
    if (access(tmp, F_OK) == 0)
        return cli_fail(CLI_EXIT_BUSY,
                        "%s: %s exists: another import into %s is running, or one was "
                        "interrupted (then remove it)",
                        req->cmd, tmp, req->img);
    int code = read_swtpm_state(req, &st);
    if (code == 0) {
        code = check_loadable(req, &st);
        if (code == 0)
            code = write_image(req, &st, tmp);
        mig_state_free(&st);
    }
    return code;
}

int cmd_import(int argc, char **argv)
{
    struct move_args a = {.size = NVRAM_DEFAULT_IMAGE_SIZE, .cipher = NVRAM_CIPHER_AES256_GCM};
    int code = parse("import", import_usage, argc, argv, &a);
    if (code == 0) {
        struct cli_import req = {.cmd = "import",
                                 .dir = a.dir,
                                 .img = a.img,
                                 .tpm_version = a.tpm_version,
                                 .key = a.have_key ? &a.key : NULL,
                                 .new_key = a.have_new_key ? &a.new_key : NULL,
                                 .size = a.size,
                                 .cipher = a.cipher};
        code = cli_import_dir(&req);
    }
    wipe_args(&a);
    return code < 0 ? 0 : code;
}

/* ---- export -------------------------------------------------------------------------- */

/* The image's blobs, read as its owner. */
static int read_image_state(const struct move_args *a, struct mig_state *st, bool *encrypted)
{
    struct nv_error err = {0};
    struct bdrv_node *bs = bdrv_open(a->img, BDRV_O_RDWR | BDRV_O_OWNER, NULL, &err);
    if (!bs)
        return cli_fail(cli_exit_code(&err, err.code), "export: %s", err.msg);
    struct nvram_options opts = {.key = a->have_key ? &a->key : NULL};
    struct nvram *nv = nvram_open(bs, &opts, &err);
    int r = nv ? nvram_load_begin(nv, &err) : err.code;
    bool loading = r == 0;
    for (int b = 0; b < NVRAM_BLOBS && r == 0; b++) {
        r = nvram_load(nv, b, &st->data[b], &st->len[b], &err);
        if (r == -ENOENT)
            r = 0;
    }
    if (loading) {
        st->tpm_version = nvram_tpm_version(nv);
        *encrypted = nvram_is_encrypted(nv);
        nvram_load_end(nv);
    }
    nvram_close(nv);
    bdrv_close(bs);
    if (r < 0) {
        mig_state_free(st);
        return cli_fail(cli_exit_code(&err, r), "export: %s", err.msg);
    }
    if (!st->data[NVRAM_PERMALL]) {
        mig_state_free(st);
        return cli_fail(CLI_EXIT_USAGE, "export: %s holds no TPM state yet (no permanent state)",
                        a->img);
    }
    return 0;
}

static int write_swtpm_state(const struct move_args *a, const struct mig_state *st, bool encrypted)
{
    if (mkdir(a->dir, 0700) < 0 && errno != EEXIST)
        return cli_fail(CLI_EXIT_ERROR, "export: %s: %s", a->dir, strerror(errno));
    const struct nvram_key *file_key = a->have_new_key ? &a->new_key : encrypted ? &a->key : NULL;
    struct nv_error err = {0};
    struct mig_key sk = {0};
    int lock_fd;
    bool made;
    /* swtpm's .lock, held while the files are written: no swtpm starts on them */
    if (mig_dir_lock(a->dir, 0640, &lock_fd, &made, &err) < 0)
        return cli_fail(cli_exit_code(&err, err.code), "export: %s; stop it first", err.msg);
    int r = file_key ? mig_key_from(file_key, &sk, &err) : 0;
    if (r == 0)
        r = mig_dir_write(a->dir, st, file_key ? &sk : NULL, a->replace, &err);
    mig_key_wipe(&sk);
    close(lock_fd);
    if (r == -EEXIST)
        return cli_fail(CLI_EXIT_USAGE, "export: %s (--replace replaces them)", err.msg);
    if (r < 0)
        return cli_fail(cli_exit_code(&err, r), "export: %s", err.msg);
    char names[64];
    printf("Exported the TPM %s state (%s) of %s to %s/%s-00.*%s, %s\n",
           st->tpm_version == 2 ? "2.0" : "1.2", present_blobs(st, names, sizeof(names)), a->img,
           a->dir, st->tpm_version == 2 ? "tpm2" : "tpm", a->replace ? " (replaced)" : "",
           file_key ? "encrypted for swtpm's --key" : "not encrypted");
    return CLI_EXIT_OK;
}

int cmd_export(int argc, char **argv)
{
    struct move_args a = {0};
    int code = parse("export", export_usage, argc, argv, &a);
    struct mig_state st = {0};
    bool encrypted = false;
    if (code == 0 && (code = read_image_state(&a, &st, &encrypted)) == 0) {
        code = write_swtpm_state(&a, &st, encrypted);
        mig_state_free(&st);
    }
    wipe_args(&a);
    return code < 0 ? 0 : code;
}
