/* store.h - the open NVRAM object, shared by store.c and admin.c. */
#ifndef NVTPM_NVRAM_STORE_H
#define NVTPM_NVRAM_STORE_H

#include <stdarg.h>

#include "internal.h"

struct nvram {
    struct bdrv_node *bs;
    struct nvram_options opts;
    struct nvram_super sb;
    int sb_copy; /* the current superblock copy; the next update writes the other */
    uint8_t data_key[NVRAM_MAX_DATA_KEY];
    int key_slot;
    struct {
        int current; /* the slot holding the current version, -1: none */
        uint64_t sequence;
        bool deleted; /* the current version is a DELETED slot */
    } blob[NVRAM_BLOBS];
    uint8_t *buf, *plain; /* a slot's bytes, and its plaintext */
    size_t buf_size;
    size_t buf_used, plain_used; /* bytes written into each since the last wipe */
    unsigned load_depth;
    bool holds_memory;    /* nvram_holds_memory */
    bool in_secret_pages; /* nv_secret_alloc'd (else calloc'd: keyless) */
    int lock_timeout;
};

void nvram_warn(const struct nvram_options *opts, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int nvram_read_super(struct bdrv_node *bs, struct nvram_super *sb, int *copy, bool valid[2],
                     char *why, size_t why_size, struct nv_error *err);
int nvram_write_super(struct bdrv_node *bs, const struct nvram_super *sb, int copy, bool sync,
                      struct nv_error *err);
int nvram_read_slot(struct nvram *nv, enum nvram_blob blob, int s, struct nvram_slot_info *info,
                    struct nv_error *err);
int nvram_scan_blob(struct nvram *nv, enum nvram_blob blob, uint8_t **data, size_t *length,
                    struct nv_error *err);
/* The slot buffers unmapped (nvram_release_memory only gives their pages
 * back). */
void nvram_free_buffers(struct nvram *nv);
/* After the image changed hands: the superblock and each blob's current slot
 * and sequence read anew under the exclusive access lock. -ESTALE when the
 * image is no longer this NVRAM (another UUID, cipher or TPM version). */
int nvram_refresh(struct nvram *nv, struct nv_error *err);
/* -EUCLEAN when the superblock says the TPM was manufactured but permall
 * (permall_current, permall_deleted: as loading sees it) does not exist. */
int nvram_check_manufactured(struct bdrv_node *bs, const struct nvram_super *sb,
                             int permall_current, bool permall_deleted, struct nv_error *err);
int nvram_commit(struct nvram *nv, enum nvram_blob blob, const uint8_t *data, size_t length,
                 bool deleted, enum nvram_cipher cipher, struct nv_error *err);

#endif
