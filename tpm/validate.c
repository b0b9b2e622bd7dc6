/* validate.c - the migration dry run below the command line, so that a VMM
 * can ask it too: can this host load this TPM state image, with this key,
 * right now? Opens the image read-only under the shared access lock (so it
 * runs beside the server that owns the image, on the other host), checks
 * each layer by name and never writes. `nvtpm validate` prints the result. */
#include "tpm.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "block.h"
#include "fdstash.h"

/* Record a check (err 0: passed); the first failure's err is the result's. */
NV_PRINTF(4, 5)
static int record(struct tpm_validation *v, const char *name, int err, const char *fmt, ...)
{
    if (v->n < TPM_VALIDATE_MAX_CHECKS) {
        v->checks[v->n].name = name;
        v->checks[v->n].err = err;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->checks[v->n].message, sizeof(v->checks[v->n].message), fmt, ap);
        va_end(ap);
        v->n++;
    }
    if (err && !v->err) {
        v->err = err;
        v->status = NV_STATUS_UNSET;
    }
    return err;
}

/* Record a failed check from the layer's error: its message, and its status
 * (what it means) if this is the first failure. */
static int record_error(struct tpm_validation *v, const char *name, int err, enum nv_status status,
                        const char *msg)
{
    bool first = !v->err;
    record(v, name, err, "%s", msg);
    if (first)
        v->status = status;
    return err;
}

/* An errno that says failure even where the layer below left none. */
static int failed(int err)
{
    return err < 0 ? err : -EIO;
}

/* 1: a blank image (no TPM state yet); 0: the superblock and key pass. */
static int check_nvram(struct tpm_validation *v, struct bdrv_node *bs,
                       const struct tpm_validate_options *o, struct nvram_info *info)
{
    struct nv_error err = {0};
    int r = nvram_inspect(bs, o->key, o->wait_ms, info, &err);
    if (r == -ENODATA)
        return record(v, "superblock", 0, "blank image: no TPM state yet (a new TPM is made)"), 1;
    if (r < 0)
        return record_error(v, "superblock", r, err.status, err.msg);
    record(v, "superblock", 0, "TPM %s, generation %llu%s", info->tpm_version == 2 ? "2.0" : "1.2",
           (unsigned long long)info->generation,
           info->superblock_valid[0] && info->superblock_valid[1] ? "" : " (one copy damaged)");
    if (info->cipher != NVRAM_CIPHER_NONE && !o->key)
        return record(v, "key", -ENOKEY, "%s is encrypted (%s); give --key", o->img,
                      nvram_cipher_name(info->cipher));
    if (info->cipher == NVRAM_CIPHER_NONE && o->key)
        return record(v, "key", -EKEYREVOKED, "%s is not encrypted; leave --key out", o->img);
    if (o->key && !info->key_opens)
        return record(v, "key", -EKEYREJECTED, "the key matches no key slot of %s", o->img);
    record(v, "key", 0, "%s", o->key ? "opens a key slot" : "none needed");
    return 0;
}

static int check_slots(struct tpm_validation *v, const struct nvram_info *info)
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
                    return record(v, "slots", -EUCLEAN, "%s: no usable slot (slot %c: %s)", name,
                                  'A' + s, si->problem);
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

/* Read, decrypt and unwrap the blobs of o->blobs_dir into in. */
static int check_blobs(struct tpm_validation *v, const struct tpm_validate_options *o,
                       int tpm_version, struct mig_state *in)
{
    struct mig_key mk = {0}, sk = {0};
    struct nv_error err = {0};
    int r = 0;
    if ((o->migration_key && (r = mig_key_from(o->migration_key, &mk, &err)) < 0) ||
        (o->key && (r = mig_key_from(o->key, &sk, &err)) < 0)) {
        mig_key_wipe(&mk); /* the one made before the other failed */
        return record_error(v, "blobs", failed(r), NV_STATUS_IO, err.msg); /* exit 9, as ever */
    }
    r = mig_dir_read(o->blobs_dir, tpm_version, o->migration_key ? &mk : NULL, o->key ? &sk : NULL,
                     in, &err);
    mig_key_wipe(&mk);
    mig_key_wipe(&sk);
    if (r < 0) /* a folder that is not there: the command line named it wrong */
        return record_error(v, "blobs", r == -ENOENT ? -EINVAL : r,
                            r == -ENOENT ? NV_STATUS_USAGE : err.status, err.msg);
    int found = 0;
    for (int b = 0; b < NVRAM_BLOBS; b++)
        found += in->data[b] != NULL;
    return record(v, "blobs", 0, "%d blob(s) from %s decrypt and parse", found, o->blobs_dir);
}

/* libtpms on this host: would it start from this state? */
static int check_libtpms(struct tpm_validation *v, struct bdrv_node *bs,
                         const struct tpm_validate_options *o, const struct nvram_info *info,
                         bool blank, bool no_state)
{
    int version = blank ? (o->tpm_version ? o->tpm_version : 2) : info->tpm_version;
    if (o->tpm_version && version != o->tpm_version)
        return record(v, "tpm-version", -EMEDIUMTYPE, "the image holds a TPM %s state",
                      version == 2 ? "2.0" : "1.2");
    record(v, "tpm-version", 0, "TPM %s", version == 2 ? "2.0" : "1.2");
    if (no_state && !o->blobs_dir)
        return record(v, "libtpms", 0, "no permanent state yet: libtpms makes a new TPM");
    struct nv_error err = {0};
    struct nvram_options no = {
        .tpm_version = version, .key = o->key, .lock_timeout_ms = o->wait_ms};
    bool use_image = !blank && !o->blobs_dir;
    struct nvram *nv = use_image ? nvram_open(bs, &no, &err) : NULL;
    struct tpm_backend_options bo = {.tpm_version = version, .nvram = nv, .debug_fd = -1};
    int r =
        !use_image || nv ? 0 : record_error(v, "libtpms", failed(err.code), err.status, err.msg);
    if (r == 0 && tpm_backend_init(&bo, &err) < 0)
        r = record_error(v, "libtpms", -EMEDIUMTYPE, NV_STATUS_NOT_LOADABLE, err.msg);
    struct mig_state in = {0};
    if (r == 0 && o->blobs_dir)
        r = check_blobs(v, o, version, &in);
    uint32_t rc = r != 0         ? 0
                  : o->blobs_dir ? tpm_backend_validate_state(&in)
                                 : tpm_backend_validate();
    mig_state_free(&in);
    char lib[32];
    snprintf(lib, sizeof(lib), "libtpms %s", tpm_libtpms_version());
    if (r == 0 && rc)
        r = record(v, "libtpms", -EMEDIUMTYPE, "%s refuses the state (TPM result 0x%x)", lib, rc);
    else if (r == 0)
        record(v, "libtpms", 0, "%s accepts the state", lib);
    nvram_close(nv);
    return r;
}

int tpm_validate(const struct tpm_validate_options *o, struct tpm_validation *v)
{
    struct fdstash stash;
    struct nv_error err = {0};
    memset(v, 0, sizeof(*v));
    fdstash_init(&stash);
    struct bdrv_node *bs = bdrv_open(o->img, 0, &stash, &err); /* read-only, no ownership */
    int r = bs ? 0 : record_error(v, "open", failed(err.code), err.status, err.msg);
    bool locked = false;
    if (r == 0 && bdrv_lock(bs, BDRV_LOCK_SHARED, o->wait_ms, &err) < 0)
        r = record_error(v, "lock", -EBUSY, NV_STATUS_BUSY, err.msg);
    else if (r == 0)
        locked = record(v, "lock", 0, "shared access lock held") == 0;
    struct bdrv_check_result res = {0};
    if (r == 0 && bdrv_check(bs, &res, false, &err) < 0)
        r = record_error(v, "qcow2", failed(err.code), err.status, err.msg);
    else if (r == 0 && res.corruptions)
        r = record(v, "qcow2", -EUCLEAN, "%llu corruption(s): %s",
                   (unsigned long long)res.corruptions, res.first_problem);
    else if (r == 0)
        record(v, "qcow2", 0, "no corruption, %llu leaked cluster(s)",
               (unsigned long long)res.leaks);
    /* The server opens the image read-write: whatever it would refuse there
     * (dirty or corrupt bit, a backing file, no write permission), so does
     * the dry run. */
    if (r == 0 && bdrv_check_writable(bs, &err) < 0)
        r = record_error(v, "writable", failed(err.code), err.status, err.msg);
    else if (r == 0)
        record(v, "writable", 0, "a server can open it read-write");
    int64_t size = r == 0 ? bdrv_getlength(bs, &err) : 0;
    if (r == 0 && size >= 0 && (uint64_t)size < NVRAM_MIN_DISK_SIZE)
        r = record(v, "superblock", -EUCLEAN,
                   "%s is not an nvtpm image: %lld bytes, too small for a TPM NVRAM", o->img,
                   (long long)size);
    struct nvram_info info = {0};
    int blank = r == 0 ? check_nvram(v, bs, o, &info) : 0;
    if (r == 0 && blank == 0 && v->err == 0)
        r = check_slots(v, &info);
    /* No permanent state yet (blank, or never written): libtpms would make a
     * new TPM, which is loadable by definition. */
    int perm = info.blobs[NVRAM_PERMALL].current;
    bool no_state = blank == 1 || perm < 0 || info.blobs[NVRAM_PERMALL].slot[perm].deleted;
    if (r == 0 && v->err == 0)
        check_libtpms(v, bs, o, &info, blank == 1, no_state);
    if (locked)
        bdrv_unlock(bs, NULL);
    if (bs)
        bdrv_close(bs);
    fdstash_cleanup(&stash);
    return v->err;
}
