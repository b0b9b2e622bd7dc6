/* tis.h - the TPM Interface Specification (PC Client PTP FIFO) register model,
 * for a VMM that embeds the TPM device: the registers of all five localities
 * in a 0x5000-byte window (locality = offset >> 12), 1-, 2- and 4-byte
 * accesses, locality arbitration with seize, interrupts, and the locality-4
 * hash interface (HASH_START/DATA/END), which QEMU's TIS ignores.
 *
 * The device does not run commands itself: ops->execute starts one and the
 * VMM (or tis_new_libtpms's worker) answers with tis_command_done. Every entry
 * point takes the device's lock (recursive, so execute may complete at once);
 * ops are called with it held and must not free the device. See docs/tis.md.
 *
 * This is libnvtpm's public API, installed as <nvtpm/tis.h>: it includes only
 * standard headers, and only what it marks NVTPM_API is exported. */
#ifndef NVTPM_TIS_H
#define NVTPM_TIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility; this marks what it exports. */
#ifndef NVTPM_API
#define NVTPM_API __attribute__((visibility("default")))
#endif

#define TIS_LOCALITIES  5
#define TIS_WINDOW_SIZE 0x5000u
#define TIS_BUFFER_MAX  4096u

struct tis_config {
    int tpm_version;      /* 1 (TPM 1.2) or 2 (TPM 2.0) */
    uint16_t vendor_id;   /* DID_VID low half; 0 = 0x1014, as QEMU */
    uint16_t device_id;   /* DID_VID high half; 0 = 0x0001 */
    uint8_t revision_id;  /* RID; 0 = 1 */
    uint32_t buffer_size; /* the command/response buffer; 0 or above 4096 = 4096 */
    uint8_t irq_vector;   /* what INT_VECTOR reads */
};

struct tis_ops {
    /* Start cmd (len bytes, valid until tis_command_done) at locality; answer
     * later, or before returning, with tis_command_done. */
    void (*execute)(void *opaque, uint8_t locality, const uint8_t *cmd, uint32_t len);
    void (*set_irq)(void *opaque, int level); /* the interrupt line, 1 raised */
    void (*cancel)(void *opaque);             /* commandCancel during execution */
    /* Optional (NULL: the flag reads as set, resets and hashes are dropped). */
    bool (*established)(void *opaque);
    void (*reset_established)(void *opaque, uint8_t locality);
    void (*hash_start)(void *opaque);
    void (*hash_data)(void *opaque, const uint8_t *data, uint32_t len);
    void (*hash_end)(void *opaque);
};

struct tis;
struct nv_error;
struct nvram_key;

/* The error object the calls below fill (opaque, so it may grow): a negative
 * errno and a message naming the file or field involved. Every err argument
 * may be NULL. tis_error_new returns NULL when out of memory. */
NVTPM_API struct nv_error *tis_error_new(void);
NVTPM_API void tis_error_free(struct nv_error *err);
NVTPM_API int tis_error_code(const struct nv_error *err);            /* 0: no error */
NVTPM_API const char *tis_error_message(const struct nv_error *err); /* "" if none */

NVTPM_API struct tis *tis_new(const struct tis_config *cfg, const struct tis_ops *ops,
                              void *opaque);
NVTPM_API void tis_free(struct tis *tis);

/* Register accesses, off relative to the window (0x0000-0x4fff), size 1, 2
 * or 4; anything else reads as all ones and writes nothing. */
NVTPM_API uint32_t tis_mmio_read(struct tis *tis, uint64_t off, unsigned size);
NVTPM_API void tis_mmio_write(struct tis *tis, uint64_t off, uint32_t val, unsigned size);

/* The response to the command execute was given (copied; at most the
 * buffer size is kept). */
NVTPM_API void tis_command_done(struct tis *tis, const uint8_t *rsp, uint32_t len);

/* Power-on state: no locality active, every locality idle. A command still
 * executing is answered into nothing. */
NVTPM_API void tis_reset(struct tis *tis);

/* The device state for live migration: a versioned blob with a checksum
 * (malloc'd). Refused (-EBUSY) while a command executes: drain first. */
NVTPM_API int tis_save(struct tis *tis, uint8_t **blob, size_t *len, struct nv_error *err);
/* Load a blob from tis_save; every field is checked (-EINVAL, state
 * unchanged, on any mismatch). */
NVTPM_API int tis_load(struct tis *tis, const uint8_t *blob, size_t len, struct nv_error *err);

/* A key in swtpm's --key syntax, as nvtpm socket --key takes it
 * (file=PATH|fd=N|pwdfile=PATH|pwdfd=N[,format=..][,mode=..][,kdf=..]), its
 * material read now, into memory kept out of core dumps. NULL on error.
 * tis_key_free wipes it; NULL is a no-op. */
NVTPM_API struct nvram_key *tis_key_new(const char *spec, struct nv_error *err);
NVTPM_API void tis_key_free(struct nvram_key *key);

/* A working device on libtpms (tpm/backend.c), its state in the NVRAM image
 * at path (created, 4 MiB qcow2, and formatted if absent), key from
 * tis_key_new (NULL: a plain image; only used here, so it may be freed once
 * this returns). Commands run on a worker thread. One per process, as there
 * is one libtpms. set_irq may be NULL; err may be NULL. */
NVTPM_API struct tis *tis_new_libtpms(const struct tis_config *cfg, const char *path,
                                      const struct nvram_key *key, void (*set_irq)(void *, int),
                                      void *irq_opaque, struct nv_error *err);

#ifdef __cplusplus
}
#endif

#endif
