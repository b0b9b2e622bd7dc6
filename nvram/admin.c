/* admin.c - looking at an NVRAM without changing it (info, check, validate),
 * managing its key slots, and encrypting a plain one crash-safely. */
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void nvram_uuid_string(const uint8_t u[16], char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
             u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
}

static void fill_info(const struct nvram_super *sb, struct nvram_info *info)
{
    info->tpm_version = sb->tpm_version;
    info->cipher = sb->cipher;
    info->encrypting = sb->flags & NVRAM_SB_ENCRYPTING;
    info->generation = sb->generation;
    memcpy(info->uuid, sb->uuid, 16);
    for (int k = 0; k < NVRAM_KEY_SLOTS; k++) {
        info->keys[k].used = sb->keys[k].used;
        info->keys[k].kind = sb->keys[k].kind;
        info->keys[k].kek_size = sb->keys[k].kek_size;
        info->keys[k].iterations = sb->keys[k].iterations;
        info->keys[k].created = sb->keys[k].created;
    }
}

/* Both slots of every blob, as a load would see them. */
static int inspect_blobs(struct nvram *nv, struct nvram_info *info, struct nv_error *err)
{
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        const struct nvram_blobdesc *d = &nv->sb.blobs[b];
        int cur = -1;
        info->blobs[b].capacity = d->slot_size - NVRAM_SLOT_HEADER_SIZE;
        for (int s = 0; s < 2; s++) {
            struct nvram_slot_info *si = &info->blobs[b].slot[s];
            info->blobs[b].offset[s] = d->offset[s];
            int r = nvram_read_slot(nv, (enum nvram_blob)b, s, si, err);
            if (r < 0)
                return r;
            bool usable = si->state == NVRAM_SLOT_VALID || si->state == NVRAM_SLOT_UNCHECKED;
            if (usable && (cur < 0 || si->sequence > info->blobs[b].slot[cur].sequence))
                cur = s;
        }
        info->blobs[b].current = cur;
    }
    return 0;
}

int nvram_inspect(struct bdrv_node *bs, const struct nvram_key *key, int lock_timeout_ms,
                  struct nvram_info *info, struct nv_error *err)
{
    memset(info, 0, sizeof(*info));
    struct nvram nv = {
        .bs = bs, .key_slot = -1, .lock_timeout = lock_timeout_ms ? lock_timeout_ms : 10000};
    char why[400];
    int r = bdrv_lock(bs, BDRV_LOCK_SHARED, nv.lock_timeout, err);
    if (r < 0)
        return r;
    nv.load_depth = 1; /* held here across everything */
    int64_t length = bdrv_getlength(bs, err);
    if (length >= 0 && (uint64_t)length < NVRAM_MIN_DISK_SIZE) /* as nvram_open says it */
        r = nv_error_set_status(err, NV_STATUS_CORRUPT, -EMSGSIZE,
                                "%s is too small for a TPM's NVRAM: %lld bytes, at least %u needed",
                                bdrv_filename(bs), (long long)length, NVRAM_MIN_DISK_SIZE);
    else
        r = nvram_read_super(bs, &nv.sb, &nv.sb_copy, info->superblock_valid, why, sizeof(why),
                             err);
    if ((r == -EUCLEAN || r == -ENOMEDIUM) && why[0])
        nv_error_set_status(err, NV_STATUS_CORRUPT, r, "%s is not a usable nvtpm NVRAM: %s",
                            bdrv_filename(bs), why);
    else if (r == -ENODATA)
        nv_error_set_status(err, NV_STATUS_CORRUPT, r, "%s is blank: it holds no TPM state yet",
                            bdrv_filename(bs));
    int64_t size = r == 0 ? bdrv_getlength(bs, err) : r;
    uint64_t end;
    if (size < 0)
        r = (int)size;
    else if (nvram_super_extent(&nv.sb, (uint64_t)size, &end, why, sizeof(why)) < 0)
        r = nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN, "%s: %s", bdrv_filename(bs), why);
    else
        r = bdrv_check_mapped(bs, 0, end, err);
    if (r == 0) {
        fill_info(&nv.sb, info);
        if (key && nv.sb.cipher != NVRAM_CIPHER_NONE) {
            nv.key_slot = nvram_keys_unlock(&nv.sb, key, nv.data_key);
            info->key_opens = nv.key_slot >= 0;
        }
        r = inspect_blobs(&nv, info, err);
    }
    int perm = info->blobs[NVRAM_PERMALL].current;
    const struct nvram_slot_info *ps = info->blobs[NVRAM_PERMALL].slot;
    if (r == 0 && ps[0].state != NVRAM_SLOT_DAMAGED &&
        ps[1].state != NVRAM_SLOT_DAMAGED) /* damage is reported as such */
        r = nvram_check_manufactured(bs, &nv.sb, perm, perm >= 0 && ps[perm].deleted, err);
    bdrv_unlock(bs, NULL);
    nv_wipe(nv.data_key, sizeof(nv.data_key));
    nvram_free_buffers(&nv);
    return r;
}

/* ---- key slots ------------------------------------------------------------------------ */

/* The superblock with generation + 1, into the other copy, flushed. With
 * both, the same content goes into the first copy too (generation + 2), so
 * that nothing removed from the superblock survives in the older copy. */
static int update_super_copies(struct nvram *nv, bool both, struct nv_error *err)
{
    int r = bdrv_lock(nv->bs, BDRV_LOCK_EXCLUSIVE, nv->lock_timeout, err);
    if (r < 0)
        return r;
    nv->sb.generation++;
    r = nvram_write_super(nv->bs, &nv->sb, 1 - nv->sb_copy, true, err);
    bdrv_unlock(nv->bs, NULL);
    if (r < 0) {
        nv->sb.generation--;
        return r;
    }
    nv->sb_copy = 1 - nv->sb_copy;
    return both ? update_super_copies(nv, false, err) : 0;
}

static int update_super(struct nvram *nv, struct nv_error *err)
{
    return update_super_copies(nv, false, err);
}

int nvram_key_add(struct nvram *nv, const struct nvram_key *new_key, struct nv_error *err)
{
    const char *img = bdrv_filename(nv->bs);
    if (nv->sb.cipher == NVRAM_CIPHER_NONE || nv->key_slot < 0)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "%s is not encrypted (use nvtpm encrypt)", img);
    if (new_key->kind == NVRAM_KEY_RAW && new_key->length != 16 && new_key->length != 32)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "a raw key has 128 or 256 bits");
    int index = -1;
    uint8_t probe[NVRAM_MAX_DATA_KEY];
    if (nvram_keys_unlock(&nv->sb, new_key, probe) >= 0) {
        nv_wipe(probe, sizeof(probe));
        return nv_error_set(err, -EEXIST, "%s: that key opens a key slot already", img);
    }
    for (int k = 0; k < NVRAM_KEY_SLOTS && index < 0; k++)
        if (!nv->sb.keys[k].used)
            index = k;
    if (index < 0)
        return nv_error_set(err, -EXFULL, "%s: all %d key slots are in use", img, NVRAM_KEY_SLOTS);
    struct nvram_keyslot saved = nv->sb.keys[index];
    int r = nvram_keyslot_fill(&nv->sb.keys[index], new_key, nv->sb.uuid, (unsigned)index,
                               nv->data_key, nvram_data_key_size(nv->sb.cipher), err);
    if (r == 0)
        r = update_super(nv, err);
    if (r < 0)
        nv->sb.keys[index] = saved;
    return r < 0 ? r : index;
}

int nvram_key_remove(struct nvram *nv, int index, struct nv_error *err)
{
    const char *img = bdrv_filename(nv->bs);
    if (index < 0)
        index = nv->key_slot;
    if (index < 0 || index >= NVRAM_KEY_SLOTS || !nv->sb.keys[index].used)
        return nv_error_set(err, -ENOENT, "%s: key slot %d is not in use", img, index);
    int used = 0;
    for (int k = 0; k < NVRAM_KEY_SLOTS; k++)
        used += nv->sb.keys[k].used;
    if (used == 1)
        return nv_error_set(err, -EPERM, "%s: key slot %d is the last one; it cannot be removed",
                            img, index);
    struct nvram_keyslot saved = nv->sb.keys[index];
    memset(&nv->sb.keys[index], 0, sizeof(nv->sb.keys[index]));
    /* Both copies: the removed key must open neither. */
    int r = update_super_copies(nv, true, err);
    if (r < 0)
        nv->sb.keys[index] = saved;
    else if (index == nv->key_slot)
        nv->key_slot = -1; /* the data key stays known to this open NVRAM */
    return r;
}

/* ---- encrypting a plain image ------------------------------------------------------------ */

/* Zero each slot's bytes past its payload: a shorter encrypted blob must not
 * leave the end of a longer plaintext one behind. */
static int wipe_slot_tails(struct nvram *nv, enum nvram_blob b, size_t len, struct nv_error *err)
{
    const struct nvram_blobdesc *d = &nv->sb.blobs[b];
    size_t tail = d->slot_size - NVRAM_SLOT_HEADER_SIZE - len;
    uint8_t *zeros = calloc(1, tail ? tail : 1);
    int r = zeros ? 0 : nv_error_set(err, -ENOMEM, "out of memory");
    for (int s = 0; s < 2 && r == 0 && tail; s++)
        r = bdrv_pwrite(nv->bs, d->offset[s] + NVRAM_SLOT_HEADER_SIZE + len, zeros, tail, err);
    free(zeros);
    return r == 0 ? bdrv_flush(nv->bs, err) : r;
}

/* Step 2: every blob twice, into both slots, encrypted. */
static int reencrypt_blobs(struct nvram *nv, struct nv_error *err)
{
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        uint8_t *data = NULL;
        size_t len = 0;
        int r = nvram_scan_blob(nv, (enum nvram_blob)b, &data, &len, err);
        if (r < 0 && r != -ENOENT)
            return r;
        bool absent = r == -ENOENT;
        if (absent && nv->blob[b].current < 0)
            continue; /* never written: nothing plain to replace */
        r = 0;
        for (int pass = 0; pass < 2 && r == 0; pass++)
            r = nvram_commit(nv, (enum nvram_blob)b, data, len, absent,
                             (enum nvram_cipher)nv->sb.cipher, err);
        if (r == 0)
            r = wipe_slot_tails(nv, (enum nvram_blob)b, absent ? 0 : len, err);
        if (data)
            nv_wipe(data, len);
        free(data);
        if (r < 0)
            return r;
    }
    return 0;
}

int nvram_encrypt(struct bdrv_node *bs, const struct nvram_key *new_key, enum nvram_cipher cipher,
                  const struct nvram_options *opts, struct nv_error *err)
{
    struct nvram_options o = *opts;
    o.key = NULL;
    o.keyless = false; /* a data key is made here */
    o.format_blank = false;
    struct nvram *nv = nvram_open(bs, &o, err);
    if (!nv && err && err->code == -ENOKEY) {
        /* An interrupted run: the new key must open it. */
        o.key = new_key;
        nv = nvram_open(bs, &o, err);
        if (nv && !(nv->sb.flags & NVRAM_SB_ENCRYPTING)) {
            nvram_close(nv);
            return nv_error_set(err, -EALREADY,
                                "%s is encrypted already (nvtpm key add adds "
                                "keys)",
                                bdrv_filename(bs));
        }
    }
    if (!nv)
        return err ? err->code : -EIO;
    int r = 0;
    if (nv->sb.cipher == NVRAM_CIPHER_NONE) { /* step 1 */
        nv->sb.cipher = cipher ? (uint8_t)cipher : NVRAM_CIPHER_AES256_GCM;
        nv->sb.flags |= NVRAM_SB_ENCRYPTING;
        size_t len = nvram_data_key_size(nv->sb.cipher);
        r = len && nvram_random(nv->data_key, len) == 0 ? 0 : nv_error_set(err, -EINVAL, "cipher");
        if (r == 0)
            r = nvram_keyslot_fill(&nv->sb.keys[0], new_key, nv->sb.uuid, 0, nv->data_key, len,
                                   err);
        if (r == 0)
            r = update_super(nv, err);
        nv->key_slot = 0;
    }
    if (r == 0)
        r = reencrypt_blobs(nv, err); /* step 2 */
    if (r == 0) {                     /* step 3 */
        nv->sb.flags &= (uint8_t)~NVRAM_SB_ENCRYPTING;
        r = update_super(nv, err);
    }
    nvram_close(nv);
    return r;
}
