/* store.c - opening an NVRAM (with every key check before anything is
 * written), formatting, and loading and committing blobs in their A/B slots. */
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_LOCK_TIMEOUT_MS 10000
#define ZERO_CHUNK              (256u << 10)

static int lock_timeout(const struct nvram_options *opts)
{
    return opts && opts->lock_timeout_ms ? opts->lock_timeout_ms : DEFAULT_LOCK_TIMEOUT_MS;
}

void nvram_warn(const struct nvram_options *opts, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (opts && opts->warn)
        opts->warn(opts->warn_opaque, msg);
    else
        fprintf(stderr, "nvtpm: warning: %s\n", msg);
}

/* Which of the two copies in raw is current (*copy, into *sb); -ENODATA
 * when both are all zeros, -EUCLEAN when neither is valid (why says why). */
static int pick_super(uint8_t (*raw)[NVRAM_SB_SIZE], struct nvram_super *sb, int *copy,
                      bool valid[2], char *why, size_t why_size)
{
    struct nvram_super cand[2];
    char reason[2][160];
    *copy = -1;
    for (int i = 0; i < 2; i++) {
        valid[i] = nvram_super_decode(raw[i], &cand[i], reason[i], sizeof(reason[i])) == 0;
        if (valid[i] && (*copy < 0 || cand[i].generation > cand[*copy].generation))
            *copy = i;
    }
    if (*copy >= 0) {
        *sb = cand[*copy];
        return 0;
    }
    if (nv_all_zero(raw[0], 2 * NVRAM_SB_SIZE))
        return -ENODATA;
    bool ours = memcmp(raw[0], "NVTPMSB1", 8) == 0 || memcmp(raw[1], "NVTPMSB1", 8) == 0;
    snprintf(why, why_size, "%s (copy 0: %s; copy 1: %s)",
             ours ? "both superblock copies are damaged" : "no nvtpm superblock", reason[0],
             reason[1]);
    return ours ? -EUCLEAN : -ENOMEDIUM;
}

/* Both superblock copies: *copy is the current one. -ENODATA when both are
 * all zeros, -EUCLEAN when neither is valid (why says why). When the read
 * itself fails (the block layer's -EUCLEAN too: a truncated image), why is
 * empty and err says what failed. */
int nvram_read_super(struct bdrv_node *bs, struct nvram_super *sb, int *copy, bool valid[2],
                     char *why, size_t why_size, struct nv_error *err)
{
    /* The copies in pages of their own, unmapped after: on the stack they
     * would deepen the start-up path by 8 KiB, and the stack's deepest page
     * stays resident in every TPM process for its life. */
    uint8_t(*raw)[NVRAM_SB_SIZE] = nv_pages_alloc(2 * NVRAM_SB_SIZE);
    why[0] = '\0';
    if (!raw)
        return nv_error_set(err, -ENOMEM, "out of memory");
    int r = bdrv_pread(bs, 0, raw, 2 * NVRAM_SB_SIZE, err);
    if (r == 0)
        r = pick_super(raw, sb, copy, valid, why, why_size);
    nv_pages_free(raw, 2 * NVRAM_SB_SIZE);
    return r;
}

/* A blank image: superblocks and the whole area the NVRAM would use are zero. */
static int check_blank(struct bdrv_node *bs, uint64_t end, struct nv_error *err)
{
    uint8_t *buf = malloc(ZERO_CHUNK);
    if (!buf)
        return nv_error_set(err, -ENOMEM, "out of memory");
    int r = 0;
    for (uint64_t off = 0; off < end && r == 0; off += ZERO_CHUNK) {
        size_t n = end - off < ZERO_CHUNK ? (size_t)(end - off) : ZERO_CHUNK;
        r = bdrv_pread(bs, off, buf, n, err);
        if (r == 0 && !nv_all_zero(buf, n))
            r = nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN,
                                    "%s holds data at offset %llu but no nvtpm NVRAM; refusing to "
                                    "format over it",
                                    bdrv_filename(bs), (unsigned long long)off);
    }
    free(buf);
    return r;
}

static int write_zeros(struct bdrv_node *bs, uint64_t end, struct nv_error *err)
{
    uint8_t *zeros = calloc(1, ZERO_CHUNK);
    if (!zeros)
        return nv_error_set(err, -ENOMEM, "out of memory");
    int r = 0;
    /* Real writes, not zero clusters: every cluster gets allocated now, so
     * that commits never change qcow2 metadata. */
    bdrv_event(bs, BDRV_EV_NVRAM_FORMAT_ZEROS);
    for (uint64_t off = 0; off < end && r == 0; off += ZERO_CHUNK)
        r = bdrv_pwrite(bs, off, zeros, end - off < ZERO_CHUNK ? (size_t)(end - off) : ZERO_CHUNK,
                        err);
    free(zeros);
    return r;
}

int nvram_write_super(struct bdrv_node *bs, const struct nvram_super *sb, int copy, bool sync,
                      struct nv_error *err)
{
    uint8_t raw[NVRAM_SB_SIZE];
    nvram_super_encode(sb, raw);
    bdrv_event(bs, BDRV_EV_NVRAM_SUPER_UPDATE);
    int r = bdrv_pwrite(bs, NVRAM_SB_OFFSET(copy), raw, sizeof(raw), err);
    if (r == 0 && sync)
        r = bdrv_flush(bs, err);
    return r;
}

/* Slot B of every blob gets a DELETED slot with sequence 1, so that a torn
 * first commit (into slot A) falls back to "absent" like any torn commit
 * falls back to the version before it. */
static int write_markers(struct bdrv_node *bs, const struct nvram_super *sb,
                         const uint8_t *data_key, struct nv_error *err)
{
    uint8_t slot[NVRAM_SLOT_HEADER_SIZE];
    size_t written;
    int r = 0;
    bdrv_event(bs, BDRV_EV_NVRAM_FORMAT_MARKERS);
    for (int b = 0; b < NVRAM_BLOBS && r == 0; b++) {
        r = nvram_slot_seal(sb, (enum nvram_blob)b, 1, NULL, 0, true, (enum nvram_cipher)sb->cipher,
                            data_key, slot, sizeof(slot), &written);
        if (r < 0)
            return nv_error_set(err, r, "%s: cannot seal the initial slots", bdrv_filename(bs));
        r = bdrv_pwrite(bs, sb->blobs[b].offset[1], slot, written, err);
    }
    return r == 0 ? bdrv_flush(bs, err) : r;
}

static int new_super(struct nvram_super *sb, const struct nvram_options *opts, uint8_t *data_key,
                     struct nv_error *err)
{
    memset(sb, 0, sizeof(*sb));
    sb->generation = 1;
    sb->tpm_version = (uint8_t)opts->tpm_version;
    nvram_layout_default(sb);
    if (nvram_random(sb->uuid, sizeof(sb->uuid)) < 0)
        return nv_error_set(err, -EIO, "no random bytes for the image UUID");
    sb->uuid[6] = (uint8_t)((sb->uuid[6] & 0x0f) | 0x40); /* version 4 */
    sb->uuid[8] = (uint8_t)((sb->uuid[8] & 0x3f) | 0x80);
    if (!opts->key)
        return 0;
    sb->cipher = opts->cipher ? (uint8_t)opts->cipher : NVRAM_CIPHER_AES256_GCM;
    size_t len = nvram_data_key_size(sb->cipher);
    if (!len || nvram_random(data_key, len) < 0)
        return nv_error_set(err, -EINVAL, "cannot make a data key for cipher %u", sb->cipher);
    return nvram_keyslot_fill(&sb->keys[0], opts->key, sb->uuid, 0, data_key, len, err);
}

/* On an image about to be formatted nothing refers to the clusters an
 * earlier format that failed (a full disk) allocated: they are leaks. Give
 * them back, so that this format reuses them rather than growing the file.
 * Corrupt metadata is refused: formatting over it would spread the damage. */
static int give_back_leaks(struct bdrv_node *bs, struct nv_error *err)
{
    struct bdrv_check_result res;
    int r = bdrv_check(bs, &res, true, err);
    if (r < 0)
        return nv_error_prefix(err, r, "%s: checking the image before formatting it",
                               bdrv_filename(bs));
    if (res.corruptions)
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN,
                                   "%s: the image's metadata is corrupt (first: %s); refusing to "
                                   "format it",
                                   bdrv_filename(bs), res.first_problem);
    return 0;
}

/* The NVRAM area of an image that was not just made: its disk space
 * reserved first (a full disk then fails the format before it has allocated
 * anything; a quarter again on top for the metadata), leaks of an earlier
 * failed format given back, every cluster allocated as zeros, on disk. */
static int prepare_area(struct bdrv_node *bs, uint64_t end, struct nv_error *err)
{
    int r = bdrv_reserve(bs, end + end / 4, err);
    if (r == 0)
        r = give_back_leaks(bs, err);
    if (r == 0)
        r = write_zeros(bs, end, err);
    if (r == 0)
        r = bdrv_flush(bs, err);
    return r;
}

static int format_locked(struct bdrv_node *bs, const struct nvram_super *sb,
                         const uint8_t *data_key, uint64_t end, bool just_created,
                         struct nv_error *err)
{
    /* A new image was made with this area preallocated, and nothing else:
     * no leaks, its clusters allocated and reading as zeros already. */
    int r = just_created ? 0 : prepare_area(bs, end, err);
    if (r == 0)
        r = nvram_write_super(bs, sb, 0, false, err);
    if (r == 0)
        r = nvram_write_super(bs, sb, 1, true, err);
    if (r == 0)
        r = write_markers(bs, sb, data_key, err);
    if (r < 0) {
        /* What this attempt allocated and could not use, given back now if
         * the image takes writes again (else the next format does it). */
        struct bdrv_check_result res;
        bdrv_check(bs, &res, true, NULL);
    }
    if (!just_created)
        bdrv_reserve(bs, 0, NULL);
    return r;
}

/* Formats the image; *sb and data_key are what it wrote (an opener that just
 * formatted needs not derive the data key again from a passphrase). */
static int format_image(struct bdrv_node *bs, const struct nvram_options *opts,
                        struct nvram_super *sb, uint8_t *data_key, struct nv_error *err)
{
    if (opts->tpm_version != 1 && opts->tpm_version != 2)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "%s: formatting needs a TPM version (1.2 or 2.0)",
                                   bdrv_filename(bs));
    int64_t size = bdrv_getlength(bs, err);
    if (size < 0)
        return (int)size;
    if ((uint64_t)size < NVRAM_MIN_DISK_SIZE)
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -EMSGSIZE,
                                   "%s is too small for a TPM's NVRAM: %lld bytes, at "
                                   "least %u needed",
                                   bdrv_filename(bs), (long long)size, NVRAM_MIN_DISK_SIZE);
    uint64_t end;
    char why[160];
    int r = new_super(sb, opts, data_key, err);
    if (r == 0 && nvram_super_extent(sb, (uint64_t)size, &end, why, sizeof(why)) < 0)
        r = nv_error_set_status(err, NV_STATUS_CORRUPT, -EMSGSIZE, "%s: %s", bdrv_filename(bs),
                                why);
    if (r == 0 && (r = bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, lock_timeout(opts), err)) == 0) {
        r = format_locked(bs, sb, data_key, end, opts->just_created, err);
        bdrv_unlock(bs, NULL);
    }
    return r;
}

int nvram_format(struct bdrv_node *bs, const struct nvram_options *opts, struct nv_error *err)
{
    struct nvram_super sb;
    uint8_t data_key[NVRAM_MAX_DATA_KEY];
    int r = format_image(bs, opts, &sb, data_key, err);
    nv_wipe(data_key, sizeof(data_key));
    return r;
}

/* ---- opening ------------------------------------------------------------------------- */

static int check_key(struct nvram *nv, const struct nvram_options *opts, struct nv_error *err)
{
    const char *img = bdrv_filename(nv->bs);
    nv->key_slot = -1;
    if (nv->sb.cipher == NVRAM_CIPHER_NONE)
        return opts->key ? nv_error_set_status(err, NV_STATUS_KEY_UNNEEDED, -EKEYREVOKED,
                                               "%s is not encrypted, but a key was given (leave it "
                                               "out, or encrypt the image with nvtpm encrypt)",
                                               img)
                         : 0;
    if (!opts->key)
        return nv_error_set_status(err, NV_STATUS_KEY_MISSING, -ENOKEY,
                                   "%s is encrypted; give --key", img);
    nv->key_slot = nvram_keys_unlock(&nv->sb, opts->key, nv->data_key);
    if (nv->key_slot < 0)
        return nv_error_set_status(err, NV_STATUS_KEY_WRONG, -EKEYREJECTED,
                                   "the key matches no key slot of %s", img);
    return 0;
}

static int open_super(struct nvram *nv, const struct nvram_options *opts, struct nv_error *err)
{
    const char *img = bdrv_filename(nv->bs);
    bool valid[2];
    char why[400];
    /* The size first: a file too small to hold a superblock (an empty one,
     * one cut short) is not an NVRAM, whatever the read past its end says. */
    int64_t size = bdrv_getlength(nv->bs, err);
    if (size >= 0 && (uint64_t)size < NVRAM_MIN_DISK_SIZE)
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -EMSGSIZE,
                                   "%s is too small for a TPM's NVRAM: %lld bytes, at "
                                   "least %u needed",
                                   img, (long long)size, NVRAM_MIN_DISK_SIZE);
    struct nvram_super made;
    bool formatted = false;
    int r = nvram_read_super(nv->bs, &nv->sb, &nv->sb_copy, valid, why, sizeof(why), err);
    if (r == -ENODATA && opts->format_blank) {
        if ((!opts->just_created && (r = check_blank(nv->bs, NVRAM_MIN_DISK_SIZE, err)) < 0) ||
            (r = format_image(nv->bs, opts, &made, nv->data_key, err)) < 0)
            return r;
        formatted = true;
        r = nvram_read_super(nv->bs, &nv->sb, &nv->sb_copy, valid, why, sizeof(why), err);
    }
    if (r == -ENODATA)
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -ENODATA,
                                   "%s is blank: it holds no TPM state yet", img);
    if ((r == -EUCLEAN || r == -ENOMEDIUM) && why[0])
        return nv_error_set_status(err, NV_STATUS_CORRUPT, r, "%s is not a usable nvtpm NVRAM: %s",
                                   img, why);
    if (r < 0)
        return r;
    if (!valid[0] || !valid[1])
        nvram_warn(opts, "%s: superblock copy %d is damaged; using copy %d", img, 1 - nv->sb_copy,
                   nv->sb_copy);
    uint64_t end;
    if (size < 0)
        return (int)size;
    if (nvram_super_extent(&nv->sb, (uint64_t)size, &end, why, sizeof(why)) < 0)
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN, "%s: %s", img, why);
    /* A truncated qcow2 image maps clusters past its end, which read as
     * zeros: blank slots, an older version, a TPM served as new. */
    if ((r = bdrv_check_mapped(nv->bs, 0, end, err)) < 0)
        return r;
    if (opts->tpm_version && opts->tpm_version != nv->sb.tpm_version)
        return nv_error_set_status(
            err, NV_STATUS_NOT_LOADABLE, -EMEDIUMTYPE, "%s holds a TPM %s state, not a TPM %s one",
            img, nv->sb.tpm_version == 2 ? "2.0" : "1.2", opts->tpm_version == 2 ? "2.0" : "1.2");
    /* The superblock this open wrote: its data key is at hand, and a
     * passphrase's slot is not derived a second time (PBKDF2 costs most of
     * an encrypted first start; swtpm_setup waits 5 s for the pid file). */
    if (formatted && memcmp(made.uuid, nv->sb.uuid, sizeof(made.uuid)) == 0) {
        nv->key_slot = nv->sb.cipher == NVRAM_CIPHER_NONE ? -1 : 0;
        return 0;
    }
    return check_key(nv, opts, err);
}

int nvram_check_manufactured(struct bdrv_node *bs, const struct nvram_super *sb,
                             int permall_current, bool permall_deleted, struct nv_error *err)
{
    if (!(sb->flags & NVRAM_SB_MANUFACTURED) || (permall_current >= 0 && !permall_deleted))
        return 0;
    return nv_error_set_status(
        err, NV_STATUS_CORRUPT, -EUCLEAN,
        "%s: permall is %s, but the superblock says this TPM was manufactured: "
        "its state is damaged; refusing to start it blank",
        bdrv_filename(bs), permall_current < 0 ? "blank" : "marked deleted");
}

static int check_permall(struct nvram *nv, struct nv_error *err)
{
    return nvram_check_manufactured(nv->bs, &nv->sb, nv->blob[NVRAM_PERMALL].current,
                                    nv->blob[NVRAM_PERMALL].deleted, err);
}

struct nvram *nvram_open(struct bdrv_node *bs, const struct nvram_options *opts,
                         struct nv_error *err)
{
    static const struct nvram_options none;
    /* pages of its own, left out of core dumps: it holds the data key;
     * ordinary memory for an opener without keys */
    bool secret = !opts || !opts->keyless || opts->key;
    struct nvram *nv = secret ? nv_secret_alloc(sizeof(*nv)) : calloc(1, sizeof(*nv));
    if (!nv) {
        nv_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    nv->in_secret_pages = secret;
    nv->bs = bs;
    nv->opts = opts ? *opts : none;
    nv->opts.key = NULL; /* not kept: the data key is what stays */
    nv->lock_timeout = lock_timeout(opts);
    int r = open_super(nv, opts ? opts : &none, err);
    for (int b = 0; r == 0 && b < NVRAM_BLOBS; b++)
        r = nvram_scan_blob(nv, (enum nvram_blob)b, NULL, NULL, err);
    if (r == 0)
        r = check_permall(nv, err);
    if (r < 0) {
        nvram_close(nv);
        return NULL;
    }
    return nv;
}

int nvram_refresh(struct nvram *nv, struct nv_error *err)
{
    const char *img = bdrv_filename(nv->bs);
    struct nvram_super sb;
    int copy, r = bdrv_lock(nv->bs, BDRV_LOCK_EXCLUSIVE, nv->lock_timeout, err);
    bool valid[2];
    char why[400];
    if (r < 0)
        return r;
    r = nvram_read_super(nv->bs, &sb, &copy, valid, why, sizeof(why), err);
    if (r == -ENODATA || ((r == -EUCLEAN || r == -ENOMEDIUM) && why[0]))
        r = nv_error_set_status(err, NV_STATUS_CORRUPT, r == -ENODATA ? -EUCLEAN : r,
                                "%s no longer holds its NVRAM: %s", img,
                                r == -ENODATA ? "it is blank" : why);
    else if (r == 0 && (memcmp(sb.uuid, nv->sb.uuid, sizeof(sb.uuid)) != 0 ||
                        sb.cipher != nv->sb.cipher || sb.tpm_version != nv->sb.tpm_version))
        r = nv_error_set(err, -ESTALE,
                         "%s is no longer the NVRAM this process opened (another process "
                         "replaced, reformatted or re-encrypted it)",
                         img);
    uint64_t end;
    int64_t size = r == 0 ? bdrv_getlength(nv->bs, err) : r;
    if (size < 0)
        r = (int)size;
    else if (nvram_super_extent(&sb, (uint64_t)size, &end, why, sizeof(why)) < 0)
        r = nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN, "%s: %s", img, why);
    else
        r = bdrv_check_mapped(nv->bs, 0, end, err);
    if (r == 0) {
        nv->sb = sb;
        nv->sb_copy = copy;
    }
    for (int b = 0; r == 0 && b < NVRAM_BLOBS; b++)
        r = nvram_scan_blob(nv, (enum nvram_blob)b, NULL, NULL, err);
    if (r == 0)
        r = check_permall(nv, err);
    bdrv_unlock(nv->bs, NULL);
    return r;
}

void nvram_close(struct nvram *nv)
{
    if (!nv)
        return;
    nvram_free_buffers(nv);
    if (nv->in_secret_pages) {
        nv_secret_free(nv, sizeof(*nv)); /* wiped, the data key with it */
    } else {
        nv_wipe(nv, sizeof(*nv));
        free(nv);
    }
}

int nvram_tpm_version(const struct nvram *nv)
{
    return nv->sb.tpm_version;
}

bool nvram_is_encrypted(const struct nvram *nv)
{
    return nv->sb.cipher != NVRAM_CIPHER_NONE;
}

int nvram_key_slot(const struct nvram *nv)
{
    return nv->key_slot;
}

/* ---- blobs ----------------------------------------------------------------------------- */

/* The slot buffers (a sealed slot, its plaintext) are pages of their own,
 * sized for the largest slot: a load or a commit touches only as many pages
 * as the blob is long, and nvram_release_memory gives them back after it
 * (a TPM process holds them for its life and uses them now and then). What
 * was written into them (the TPM's state, its secrets with it) is wiped
 * first, so that no copy stays in the pages the kernel takes back. */
static int ensure_buffers(struct nvram *nv, size_t size, struct nv_error *err)
{
    nv->holds_memory = true; /* (also when the operation fails after this) */
    if (nv->buf_size >= size)
        return 0;
    uint8_t *buf = nv_pages_alloc(size), *plain = nv_pages_alloc(size);
    if (!buf || !plain) {
        nv_pages_free(buf, size);
        nv_pages_free(plain, size);
        return nv_error_set(err, -ENOMEM, "out of memory");
    }
    nvram_free_buffers(nv);
    nv->buf = buf;
    nv->plain = plain;
    nv->buf_size = size;
    return 0;
}

static void note_used(size_t *used, size_t n)
{
    *used = n > *used ? n : *used;
}

static void release_buffers(struct nvram *nv)
{
    if (nv->buf_used)
        nv_wipe(nv->buf, nv->buf_used);
    if (nv->plain_used)
        nv_wipe(nv->plain, nv->plain_used);
    nv->buf_used = nv->plain_used = 0;
    nv_pages_release(nv->buf, nv->buf_size);
    nv_pages_release(nv->plain, nv->buf_size);
}

void nvram_free_buffers(struct nvram *nv)
{
    release_buffers(nv);
    nv_pages_free(nv->buf, nv->buf_size);
    nv_pages_free(nv->plain, nv->buf_size);
    nv->buf = nv->plain = NULL;
    nv->buf_size = 0;
}

void nvram_release_memory(struct nvram *nv)
{
    if (!nv || !nv->holds_memory)
        return;
    release_buffers(nv);
    bdrv_release_memory(nv->bs);
    nv->holds_memory = false;
}

bool nvram_holds_memory(const struct nvram *nv)
{
    return nv && nv->holds_memory;
}

/* Read and verify slot s of blob into nv->buf / nv->plain. */
int nvram_read_slot(struct nvram *nv, enum nvram_blob blob, int s, struct nvram_slot_info *info,
                    struct nv_error *err)
{
    const struct nvram_blobdesc *d = &nv->sb.blobs[blob];
    int r = ensure_buffers(nv, d->slot_size, err);
    if (r == 0)
        r = bdrv_pread(nv->bs, d->offset[s], nv->buf, NVRAM_SLOT_HEADER_SIZE, err);
    if (r < 0)
        return r;
    uint32_t len = nvram_slot_header_length(nv->buf);
    note_used(&nv->buf_used, NVRAM_SLOT_HEADER_SIZE);
    if (len <= d->slot_size - NVRAM_SLOT_HEADER_SIZE) { /* what the reads and the opening touch */
        note_used(&nv->buf_used, NVRAM_SLOT_HEADER_SIZE + len);
        note_used(&nv->plain_used, len);
    }
    if (len && len <= d->slot_size - NVRAM_SLOT_HEADER_SIZE &&
        (r = bdrv_pread(nv->bs, d->offset[s] + NVRAM_SLOT_HEADER_SIZE,
                        nv->buf + NVRAM_SLOT_HEADER_SIZE, len, err)) < 0)
        return r;
    nvram_slot_open(nv->buf, d->slot_size, blob, &nv->sb,
                    nv->sb.cipher != NVRAM_CIPHER_NONE && nv->key_slot >= 0 ? nv->data_key : NULL,
                    nv->plain, info);
    return 0;
}

/* The current slot of blob; with data, its plaintext too (malloc'd). */
int nvram_scan_blob(struct nvram *nv, enum nvram_blob blob, uint8_t **data, size_t *length,
                    struct nv_error *err)
{
    struct nvram_slot_info info[2];
    const char *name = nvram_blob_name(blob), *img = bdrv_filename(nv->bs);
    int r = nvram_load_begin(nv, err);
    if (r < 0)
        return r;
    for (int s = 0; s < 2 && r == 0; s++)
        r = nvram_read_slot(nv, blob, s, &info[s], err);
    int cur = -1;
    for (int s = 0; r == 0 && s < 2; s++)
        if (info[s].state == NVRAM_SLOT_VALID && (cur < 0 || info[s].sequence > info[cur].sequence))
            cur = s;
    if (r == 0 && data && cur >= 0 && !info[cur].deleted) {
        /* read_slot left the last slot read in nv->plain: read cur again if needed */
        if (cur == 0)
            r = nvram_read_slot(nv, blob, 0, &info[0], err);
        if (r == 0 && !(*data = malloc(info[cur].length ? info[cur].length : 1)))
            r = nv_error_set(err, -ENOMEM, "out of memory");
        if (r == 0) {
            memcpy(*data, nv->plain, info[cur].length);
            *length = info[cur].length;
        }
    }
    nvram_load_end(nv);
    nv->holds_memory = true;
    if (r < 0)
        return r;
    for (int s = 0; s < 2; s++)
        if (info[s].state == NVRAM_SLOT_DAMAGED && cur >= 0 && cur != s)
            nvram_warn(&nv->opts, "%s: %s slot %c is damaged (%s); using slot %c (sequence %llu)",
                       img, name, 'A' + s, info[s].problem, 'A' + cur,
                       (unsigned long long)info[cur].sequence);
    if (cur < 0 && (info[0].state == NVRAM_SLOT_DAMAGED || info[1].state == NVRAM_SLOT_DAMAGED))
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN,
                                   "%s: both slots of %s are unusable (A: %s; B: %s)", img, name,
                                   info[0].state == NVRAM_SLOT_BLANK ? "blank" : info[0].problem,
                                   info[1].state == NVRAM_SLOT_BLANK ? "blank" : info[1].problem);
    nv->blob[blob].current = cur;
    nv->blob[blob].sequence = cur >= 0 ? info[cur].sequence : 0;
    nv->blob[blob].deleted = cur >= 0 && info[cur].deleted;
    if (data && (cur < 0 || info[cur].deleted))
        return nv_error_set(err, -ENOENT, "%s: %s does not exist%s", img, name,
                            cur < 0 ? "" : " (deleted)");
    return 0;
}

int nvram_load_begin(struct nvram *nv, struct nv_error *err)
{
    if (nv->load_depth == 0) {
        int r = bdrv_lock(nv->bs, BDRV_LOCK_SHARED, nv->lock_timeout, err);
        if (r < 0)
            return r;
    }
    nv->load_depth++;
    return 0;
}

void nvram_load_end(struct nvram *nv)
{
    if (nv->load_depth && --nv->load_depth == 0)
        bdrv_unlock(nv->bs, NULL);
}

int nvram_load(struct nvram *nv, enum nvram_blob blob, uint8_t **data, size_t *length,
               struct nv_error *err)
{
    if (blob >= NVRAM_BLOBS)
        return nv_error_set(err, -EINVAL, "no blob %d", blob);
    *data = NULL;
    *length = 0;
    return nvram_scan_blob(nv, blob, data, length, err);
}

/* The highest sequence number either slot header of blob shows, torn slots
 * included: a commit must go out above it, whatever nv caches. */
static int disk_sequence(struct nvram *nv, enum nvram_blob blob, uint64_t *max,
                         struct nv_error *err)
{
    *max = 0;
    for (int s = 0; s < 2; s++) {
        uint8_t head[NVRAM_SLOT_SEQUENCE_END];
        int r = bdrv_pread(nv->bs, nv->sb.blobs[blob].offset[s], head, sizeof(head), err);
        if (r < 0)
            return r;
        uint64_t seq = nvram_slot_header_sequence(head, blob);
        *max = seq > *max ? seq : *max;
    }
    return 0;
}

/* Seal the next version of blob into nv->buf: *target is the slot it goes
 * to, *seq its sequence number (above floor). */
static int seal_next(struct nvram *nv, enum nvram_blob blob, const uint8_t *data, size_t length,
                     bool deleted, enum nvram_cipher cipher, uint64_t floor, int *target,
                     uint64_t *seq, size_t *written, struct nv_error *err)
{
    *target = nv->blob[blob].current < 0 ? 0 : 1 - nv->blob[blob].current;
    *seq = (nv->blob[blob].sequence > floor ? nv->blob[blob].sequence : floor) + 1;
    int r = nvram_slot_seal(&nv->sb, blob, *seq, data, length, deleted, cipher, nv->data_key,
                            nv->buf, nv->buf_size, written);
    note_used(&nv->buf_used, r < 0 ? nv->buf_size : *written); /* (a failed seal: all of it) */
    return r < 0 ? nv_error_set(err, r, "%s: cannot seal %s", bdrv_filename(nv->bs),
                                nvram_blob_name(blob))
                 : 0;
}

/* The superblock with the MANUFACTURED flag set or cleared, generation + 1,
 * into the other copy (under the exclusive access lock); flushed with sync. */
static int set_manufactured(struct nvram *nv, bool on, bool sync, struct nv_error *err)
{
    struct nvram_super sb = nv->sb;
    sb.flags = (uint8_t)(on ? sb.flags | NVRAM_SB_MANUFACTURED : sb.flags & ~NVRAM_SB_MANUFACTURED);
    sb.generation++;
    int r = nvram_write_super(nv->bs, &sb, 1 - nv->sb_copy, sync, err);
    if (r == 0) {
        nv->sb = sb;
        nv->sb_copy = 1 - nv->sb_copy;
    }
    return r;
}

/* Before a commit's slot is written. Deleting permall clears MANUFACTURED
 * first, durably (a crash between leaves a flagless image with permall, as
 * before the flag existed). Once a permall is on disk and durable, the next
 * commit, of any blob, sets the flag in the same flush as its slot: a crash
 * before that flush leaves the flag either way, with permall there, so a
 * commit stays one flush, and the flag never outlives its permall. */
static int update_manufactured(struct nvram *nv, enum nvram_blob blob, bool deleted,
                               struct nv_error *err)
{
    bool flagged = nv->sb.flags & NVRAM_SB_MANUFACTURED;
    bool permall = nv->blob[NVRAM_PERMALL].current >= 0 && !nv->blob[NVRAM_PERMALL].deleted;
    if (blob == NVRAM_PERMALL && deleted)
        return flagged ? set_manufactured(nv, false, !nv->opts.no_sync, err) : 0;
    if (flagged || !permall || nv->opts.no_sync) /* without flushes nothing is known durable */
        return 0;
    return set_manufactured(nv, true, false, err);
}

int nvram_commit(struct nvram *nv, enum nvram_blob blob, const uint8_t *data, size_t length,
                 bool deleted, enum nvram_cipher cipher, struct nv_error *err)
{
    const struct nvram_blobdesc *d = &nv->sb.blobs[blob];
    const char *img = bdrv_filename(nv->bs);
    size_t written;
    int target;
    uint64_t seq, on_disk;
    if (length > d->slot_size - NVRAM_SLOT_HEADER_SIZE)
        return nv_error_set(err, -EFBIG, "%s: %s of %zu bytes exceeds its capacity of %u", img,
                            nvram_blob_name(blob), length, d->slot_size - NVRAM_SLOT_HEADER_SIZE);
    int r = ensure_buffers(nv, d->slot_size, err);
    if (r == 0)
        r = seal_next(nv, blob, data, length, deleted, cipher, 0, &target, &seq, &written, err);
    if (r < 0)
        return r;
    if ((r = bdrv_lock(nv->bs, BDRV_LOCK_EXCLUSIVE, nv->lock_timeout, err)) < 0)
        return r;
    /* A header at or above seq: another owner committed since this one last
     * read the blob (or a torn commit left its number). Read the blob again
     * and go above everything on disk. */
    r = disk_sequence(nv, blob, &on_disk, err);
    if (r == 0 && on_disk == UINT64_MAX) /* no number left above it: damaged */
        r = nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN,
                                "%s: a %s slot header claims the last sequence number", img,
                                nvram_blob_name(blob));
    if (r == 0 && on_disk >= seq && (r = nvram_scan_blob(nv, blob, NULL, NULL, err)) == 0)
        r = seal_next(nv, blob, data, length, deleted, cipher, on_disk, &target, &seq, &written,
                      err);
    if (r == 0)
        r = update_manufactured(nv, blob, deleted, err);
    if (r == 0) {
        bdrv_event(nv->bs, BDRV_EV_NVRAM_COMMIT_SLOT);
        r = bdrv_pwrite(nv->bs, d->offset[target], nv->buf, written, err);
    }
    if (r == 0 && !nv->opts.no_sync && (r = bdrv_flush(nv->bs, err)) < 0) {
        /* The new slot may be readable although it is not durable: blank its
         * header (best effort) so that loads keep returning the previous
         * version, as the failed commit tells the caller. */
        static const uint8_t zeros[NVRAM_SLOT_HEADER_SIZE];
        bdrv_event(nv->bs, BDRV_EV_NVRAM_COMMIT_UNDO);
        if (bdrv_pwrite(nv->bs, d->offset[target], zeros, sizeof(zeros), NULL) == 0)
            bdrv_flush(nv->bs, NULL);
    }
    bdrv_unlock(nv->bs, NULL);
    nv->holds_memory = true;
    if (r < 0)
        return nv_error_prefix(err, r, "committing %s", nvram_blob_name(blob));
    nv->blob[blob].current = target;
    nv->blob[blob].sequence = seq;
    nv->blob[blob].deleted = deleted;
    return 0;
}

int nvram_store(struct nvram *nv, enum nvram_blob blob, const uint8_t *data, size_t length,
                struct nv_error *err)
{
    if (blob >= NVRAM_BLOBS)
        return nv_error_set(err, -EINVAL, "no blob %d", blob);
    return nvram_commit(nv, blob, data, length, false, (enum nvram_cipher)nv->sb.cipher, err);
}

int nvram_delete(struct nvram *nv, enum nvram_blob blob, struct nv_error *err)
{
    if (blob >= NVRAM_BLOBS)
        return nv_error_set(err, -EINVAL, "no blob %d", blob);
    if (nv->blob[blob].current < 0)
        return 0; /* never written: nothing to delete */
    return nvram_commit(nv, blob, NULL, 0, true, (enum nvram_cipher)nv->sb.cipher, err);
}
