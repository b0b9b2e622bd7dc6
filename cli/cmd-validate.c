/* cmd-validate.c - `nvtpm validate IMG`: the migration dry run. Can this host
 * load this TPM state image, with this key, right now? Opens the image
 * read-only under the shared access lock (so it runs beside the server that
 * owns the image, on the other host), checks each layer by name and never
 * writes. One exit code per outcome; --json gives every check. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "cli.h"
#include "fdstash.h"
#include "migration.h"
#include "tpm.h"

static const char validate_usage[] =
    "Usage: nvtpm validate IMG [--key KEY] [--tpm2|--tpm1.2] [--wait SECONDS] [--json]\n"
    "                          [--blobs DIR [--migration-key KEY]]\n"
    "\n"
    "The migration dry run: can this host load the TPM state in IMG, with this key,\n"
    "right now? Opens IMG read-only under the shared access lock (it runs beside the\n"
    "server that owns the image) and checks, each by name: the lock, the qcow2\n"
    "structure (as nvtpm check), what the server's read-write open would refuse\n"
    "(the dirty or corrupt bit, a file this user cannot write), the NVRAM\n"
    "superblock, the key, every blob slot (each current blob decrypts and\n"
    "authenticates), the TPM version, and that libtpms on this host accepts the\n"
    "state (TPMLIB_ValidateState). Never writes.\n"
    "\n"
    "  --key KEY          the image's key (see nvtpm create --help)\n"
    "  --tpm2, --tpm1.2   the TPM version the state must be\n"
    "  --wait SECONDS     wait this long for the access lock while a server commits\n"
    "                     (default 10)\n"
    "  --json             every check as JSON\n"
    "  --blobs DIR        validate incoming blobs instead of the image's state: swtpm's\n"
    "                     state files (tpm2-00.permall, tpm2-00.volatilestate,\n"
    "                     tpm2-00.savestate; tpm-00.* for TPM 1.2) or blobs saved with\n"
    "                     GET_STATEBLOB (permanent, volatile, savestate); encrypted ones\n"
    "                     need --migration-key (and --key for swtpm's state key)\n"
    "\n"
    "Exit codes: 0 loadable, 1 usage, 2 corrupt, 4 key missing, 5 key wrong,\n"
    "6 key given for a plain image, 7 busy (no lock in time), 8 not loadable here\n"
    "(TPM version, libtpms), 9 other errors.\n";

#define MAX_CHECKS 16

struct validation {
    struct {
        const char *name, *status;
        char message[512];
    } checks[MAX_CHECKS];
    int n, code;
    const char *img;
};

/* Record a check; a failure's code is the command's if it is the first. */
NV_PRINTF(4, 5)
static int record(struct validation *v, const char *name, int code, const char *fmt, ...)
{
    if (v->n < MAX_CHECKS) {
        v->checks[v->n].name = name;
        v->checks[v->n].status = code ? "failed" : "ok";
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->checks[v->n].message, sizeof(v->checks[v->n].message), fmt, ap);
        va_end(ap);
        v->n++;
    }
    if (code && !v->code)
        v->code = code;
    return code;
}

struct options {
    const char *img, *blobs_dir;
    struct nvram_key key, migration_key;
    bool have_key, have_migration_key, json;
    int tpm_version;
    int wait_ms;
};

static int check_nvram(struct validation *v, struct bdrv_node *bs, const struct options *o,
                       struct nvram_info *info)
{
    struct nv_error err = {0};
    int r = nvram_inspect(bs, o->have_key ? &o->key : NULL, o->wait_ms, info, &err);
    if (r == -ENODATA)
        return record(v, "superblock", 0, "blank image: no TPM state yet (a new TPM is made)"), 1;
    if (r < 0)
        return record(v, "superblock", cli_exit_code(&err, r), "%s", err.msg);
    record(v, "superblock", 0, "TPM %s, generation %llu%s", info->tpm_version == 2 ? "2.0" : "1.2",
           (unsigned long long)info->generation,
           info->superblock_valid[0] && info->superblock_valid[1] ? "" : " (one copy damaged)");
    if (info->cipher != NVRAM_CIPHER_NONE && !o->have_key)
        return record(v, "key", CLI_EXIT_KEY_MISSING, "%s is encrypted (%s); give --key", o->img,
                      nvram_cipher_name(info->cipher));
    if (info->cipher == NVRAM_CIPHER_NONE && o->have_key)
        return record(v, "key", CLI_EXIT_KEY_UNNEEDED, "%s is not encrypted; leave --key out",
                      o->img);
    if (o->have_key && !info->key_opens)
        return record(v, "key", CLI_EXIT_KEY_WRONG, "the key matches no key slot of %s", o->img);
    record(v, "key", 0, "%s", o->have_key ? "opens a key slot" : "none needed");
    return 0;
}

static int check_slots(struct validation *v, const struct nvram_info *info)
{
    char notes[400] = "";
    size_t used = 0;
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        const char *name = nvram_blob_name((enum nvram_blob)b);
        bool damaged = false;
        for (int s = 0; s < 2; s++) {
            const struct nvram_slot_info *si = &info->blobs[b].slot[s];
            if (si->state == NVRAM_SLOT_DAMAGED) {
                damaged = true;
                if (info->blobs[b].current < 0)
                    return record(v, "slots", CLI_EXIT_CORRUPT, "%s: no usable slot (slot %c: %s)",
                                  name, 'A' + s, si->problem);
            }
        }
        const struct nvram_slot_info *cur =
            info->blobs[b].current >= 0 ? &info->blobs[b].slot[info->blobs[b].current] : NULL;
        used +=
            (size_t)snprintf(notes + used, sizeof(notes) - used, "%s%s %s%s", b ? ", " : "", name,
                             !cur || cur->deleted             ? "absent"
                             : cur->state == NVRAM_SLOT_VALID ? "valid"
                                                              : "unchecked",
                             damaged ? " (one slot damaged, the other good)" : "");
        if (used >= sizeof(notes))
            used = sizeof(notes) - 1;
    }
    return record(v, "slots", 0, "%s", notes);
}

/* Read, decrypt and unwrap the blobs of --blobs DIR into in. */
static int check_blobs(struct validation *v, const struct options *o, int tpm_version,
                       struct mig_state *in)
{
    struct mig_key mk = {0}, sk = {0};
    struct nv_error err = {0};
    if ((o->have_migration_key && mig_key_from(&o->migration_key, &mk, &err) < 0) ||
        (o->have_key && mig_key_from(&o->key, &sk, &err) < 0))
        return record(v, "blobs", CLI_EXIT_ERROR, "%s", err.msg);
    int r = mig_dir_read(o->blobs_dir, tpm_version, o->have_migration_key ? &mk : NULL,
                         o->have_key ? &sk : NULL, in, &err);
    mig_key_wipe(&mk);
    mig_key_wipe(&sk);
    if (r < 0)
        return record(v, "blobs", r == -ENOENT ? CLI_EXIT_USAGE : cli_exit_code(&err, r), "%s",
                      err.msg);
    int found = 0;
    for (int b = 0; b < NVRAM_BLOBS; b++)
        found += in->data[b] != NULL;
    return record(v, "blobs", 0, "%d blob(s) from %s decrypt and parse", found, o->blobs_dir);
}

/* libtpms on this host: would it start from this state? */
static int check_libtpms(struct validation *v, struct bdrv_node *bs, const struct options *o,
                         const struct nvram_info *info, bool blank, bool no_state)
{
    int version = blank ? (o->tpm_version ? o->tpm_version : 2) : info->tpm_version;
    if (o->tpm_version && version != o->tpm_version)
        return record(v, "tpm-version", CLI_EXIT_NOT_LOADABLE, "the image holds a TPM %s state",
                      version == 2 ? "2.0" : "1.2");
    record(v, "tpm-version", 0, "TPM %s", version == 2 ? "2.0" : "1.2");
    if (no_state && !o->blobs_dir)
        return record(v, "libtpms", 0, "no permanent state yet: libtpms makes a new TPM");
    struct nv_error err = {0};
    struct nvram_options no = {
        .tpm_version = version, .key = o->have_key ? &o->key : NULL, .lock_timeout_ms = o->wait_ms};
    bool use_image = !blank && !o->blobs_dir;
    struct nvram *nv = use_image ? nvram_open(bs, &no, &err) : NULL;
    struct tpm_backend_options bo = {.tpm_version = version, .nvram = nv, .debug_fd = -1};
    int r =
        !use_image || nv ? 0 : record(v, "libtpms", cli_exit_code(&err, err.code), "%s", err.msg);
    if (r == 0 && tpm_backend_init(&bo, &err) < 0)
        r = record(v, "libtpms", CLI_EXIT_NOT_LOADABLE, "%s", err.msg);
    struct mig_state in = {0};
    if (r == 0 && o->blobs_dir)
        r = check_blobs(v, o, version, &in);
    uint32_t rc = r != 0         ? 0
                  : o->blobs_dir ? tpm_backend_validate_state(&in)
                                 : tpm_backend_validate();
    mig_state_free(&in);
    char lib[32];
    snprintf(lib, sizeof(lib), "libtpms %s", cli_libtpms_version());
    if (r == 0 && rc)
        r = record(v, "libtpms", CLI_EXIT_NOT_LOADABLE, "%s refuses the state (TPM result 0x%x)",
                   lib, rc);
    else if (r == 0)
        record(v, "libtpms", 0, "%s accepts the state", lib);
    nvram_close(nv);
    return r;
}

static int validate(struct validation *v, const struct options *o)
{
    struct fdstash stash;
    struct nv_error err = {0};
    fdstash_init(&stash);
    struct bdrv_node *bs = bdrv_open(o->img, 0, &stash, &err); /* read-only, no ownership */
    int r = bs ? 0 : record(v, "open", cli_exit_code(&err, err.code), "%s", err.msg);
    bool locked = false;
    if (r == 0 && bdrv_lock(bs, BDRV_LOCK_SHARED, o->wait_ms, &err) < 0)
        r = record(v, "lock", CLI_EXIT_BUSY, "%s", err.msg);
    else if (r == 0)
        locked = record(v, "lock", 0, "shared access lock held") == 0;
    struct bdrv_check_result res = {0};
    if (r == 0 && bdrv_check(bs, &res, false, &err) < 0)
        r = record(v, "qcow2", cli_exit_code(&err, err.code), "%s", err.msg);
    else if (r == 0 && res.corruptions)
        r = record(v, "qcow2", CLI_EXIT_CORRUPT, "%llu corruption(s): %s",
                   (unsigned long long)res.corruptions, res.first_problem);
    else if (r == 0)
        record(v, "qcow2", 0, "no corruption, %llu leaked cluster(s)",
               (unsigned long long)res.leaks);
    /* The server opens the image read-write: whatever it would refuse there
     * (dirty or corrupt bit, a backing file, no write permission), so does
     * the dry run. */
    if (r == 0 && bdrv_check_writable(bs, &err) < 0)
        r = record(v, "writable", cli_exit_code(&err, err.code), "%s", err.msg);
    else if (r == 0)
        record(v, "writable", 0, "a server can open it read-write");
    int64_t size = r == 0 ? bdrv_getlength(bs, &err) : 0;
    if (r == 0 && size >= 0 && (uint64_t)size < NVRAM_MIN_DISK_SIZE)
        r = record(v, "superblock", CLI_EXIT_CORRUPT,
                   "%s is not an nvtpm image: %lld bytes, too small for a TPM NVRAM", o->img,
                   (long long)size);
    struct nvram_info info = {0};
    int blank = r == 0 ? check_nvram(v, bs, o, &info) : 0;
    if (r == 0 && blank == 0 && v->code == 0)
        r = check_slots(v, &info);
    /* No permanent state yet (blank, or never written): libtpms would make a
     * new TPM, which is loadable by definition. */
    int perm = info.blobs[NVRAM_PERMALL].current;
    bool no_state = blank == 1 || perm < 0 || info.blobs[NVRAM_PERMALL].slot[perm].deleted;
    if (r == 0 && v->code == 0)
        check_libtpms(v, bs, o, &info, blank == 1, no_state);
    if (locked)
        bdrv_unlock(bs, NULL);
    if (bs)
        bdrv_close(bs);
    fdstash_cleanup(&stash);
    return v->code;
}

static void print_text(const struct validation *v)
{
    for (int i = 0; i < v->n; i++)
        printf("%-7s %-12s %s\n", v->checks[i].status, v->checks[i].name, v->checks[i].message);
    if (v->code == 0)
        printf("%s: loadable here\n", v->img);
}

static void print_json(const struct validation *v)
{
    json_object *root = json_object_new_object(), *checks = json_object_new_array();
    json_object_object_add(root, "image", json_object_new_string(v->img));
    json_object_object_add(root, "loadable", json_object_new_boolean(v->code == 0));
    json_object_object_add(root, "exit-code", json_object_new_int(v->code));
    for (int i = 0; i < v->n; i++) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "name", json_object_new_string(v->checks[i].name));
        json_object_object_add(c, "status", json_object_new_string(v->checks[i].status));
        json_object_object_add(c, "message", json_object_new_string(v->checks[i].message));
        json_object_array_add(checks, c);
    }
    json_object_object_add(root, "checks", checks);
    printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY));
    json_object_put(root);
}

static int parse(int argc, char **argv, struct options *o)
{
    enum { O_KEY = 256, O_MIGKEY, O_TPM2, O_TPM12, O_WAIT, O_JSON, O_BLOBS };
    static const struct option longopts[] = {{"key", required_argument, NULL, O_KEY},
                                             {"migration-key", required_argument, NULL, O_MIGKEY},
                                             {"tpm2", no_argument, NULL, O_TPM2},
                                             {"tpm1.2", no_argument, NULL, O_TPM12},
                                             {"wait", required_argument, NULL, O_WAIT},
                                             {"json", no_argument, NULL, O_JSON},
                                             {"blobs", required_argument, NULL, O_BLOBS},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int c, r = 0;
    uint64_t secs;
    opterr = 0;
    while (r == 0 && (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h')
            return fputs(validate_usage, stdout), -1;
        if (c == O_KEY && !o->have_key)
            o->have_key = (r = cli_parse_key("--key", optarg, &o->key)) == 0;
        else if (c == O_MIGKEY && !o->have_migration_key)
            o->have_migration_key =
                (r = cli_parse_key("--migration-key", optarg, &o->migration_key)) == 0;
        else if ((c == O_TPM2 || c == O_TPM12) && !o->tpm_version)
            o->tpm_version = c == O_TPM2 ? 2 : 1;
        else if (c == O_WAIT && nv_parse_u64(optarg, 3600, &secs) == 0)
            o->wait_ms = (int)secs * 1000;
        else if (c == O_JSON)
            o->json = true;
        else if (c == O_BLOBS)
            o->blobs_dir = optarg;
        else
            r = cli_usage_error("validate", argv[optind - 1]);
    }
    if (r == 0 && optind + 1 != argc)
        r = cli_fail(CLI_EXIT_USAGE, "validate: give one image (nvtpm validate IMG [options])");
    if (r == 0 && o->have_migration_key && !o->blobs_dir)
        r = cli_fail(CLI_EXIT_USAGE, "validate: --migration-key is for --blobs");
    o->img = r == 0 ? argv[optind] : NULL;
    return r;
}

int cmd_validate(int argc, char **argv)
{
    struct options o = {.wait_ms = 10000};
    struct validation v = {0};
    int r = parse(argc, argv, &o);
    if (r == 0) {
        v.img = o.img;
        validate(&v, &o);
        if (o.json)
            print_json(&v);
        else
            print_text(&v);
        if (v.code && !o.json)
            for (int i = 0; i < v.n; i++)
                if (strcmp(v.checks[i].status, "failed") == 0)
                    cli_fail(v.code, "validate: %s: %s: %s", o.img, v.checks[i].name,
                             v.checks[i].message);
        r = v.code;
    }
    nvram_key_wipe(&o.key);
    nvram_key_wipe(&o.migration_key);
    return r < 0 ? 0 : r;
}
