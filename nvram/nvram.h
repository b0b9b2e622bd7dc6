/* nvram.h - the NVRAM store: the TPM's state blobs (permall, volatilestate,
 * savestate) in A/B slots inside an image's virtual disk, optionally
 * encrypted with AES-GCM under a data key wrapped in key slots. The format is
 * specified in docs/nvram-format.md. Calls go down to block/ only.
 *
 * Errors are negative errnos with a message in err. The ones a caller tells
 * apart:
 *   -ENOKEY        the image is encrypted and no key was given
 *   -EKEYREJECTED  the key opens no key slot
 *   -EKEYREVOKED   a key was given for an image that is not encrypted
 *   -ENOMEDIUM     not an nvtpm NVRAM (something else is there)
 *   -EUCLEAN       an nvtpm NVRAM damaged beyond use
 *   -ENODATA       a blank image that was not to be formatted
 *   -EMSGSIZE      the image is too small to hold the NVRAM (-ENOSPC is a
 *                  full file system, an I/O error like any other)
 *   -EMEDIUMTYPE   the image holds the other TPM version's state
 *   -EAGAIN, -ETIMEDOUT  the access lock is held by another process
 *   -ENOENT        (load) the blob does not exist */
#ifndef NVTPM_NVRAM_H
#define NVTPM_NVRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block.h"

#define NVRAM_KEY_SLOTS          8
#define NVRAM_MIN_DISK_SIZE      (2240u * 1024u)
#define NVRAM_DEFAULT_IMAGE_SIZE (4u << 20) /* a new image's virtual size */
#define NVRAM_DEFAULT_ITERATIONS 600000u
#define NVRAM_MIN_ITERATIONS     1000u
#define NVRAM_PASSPHRASE_MAX     1024

enum nvram_blob {
    NVRAM_PERMALL,
    NVRAM_VOLATILESTATE,
    NVRAM_SAVESTATE,
    NVRAM_BLOBS,
};

enum nvram_cipher {
    NVRAM_CIPHER_NONE = 0,
    NVRAM_CIPHER_AES128_GCM = 1,
    NVRAM_CIPHER_AES256_GCM = 2,
};

const char *nvram_blob_name(enum nvram_blob blob);
/* The blob called name, or -ENOENT. */
int nvram_blob_by_name(const char *name);
const char *nvram_cipher_name(enum nvram_cipher cipher);

/* ---- keys ------------------------------------------------------------------- */

enum nvram_key_kind {
    NVRAM_KEY_RAW = 1,        /* 128 or 256 bits */
    NVRAM_KEY_PASSPHRASE = 2, /* through PBKDF2-HMAC-SHA512 */
};

struct nvram_key {
    enum nvram_key_kind kind;
    uint8_t material[NVRAM_PASSPHRASE_MAX];
    size_t length;
    uint32_t iterations; /* for a new passphrase slot */
    bool kdf_sha512;     /* swtpm's kdf=sha512 (only for swtpm state files) */
    size_t cbc_bytes;    /* a passphrase's AES-CBC key size for swtpm's formats:
                          * 16, or 32 with mode=aes-256-cbc */
};

/* Parse a key in swtpm's --key syntax (docs/nvram-format.md) and read its
 * material: file=PATH|fd=N|pwdfile=PATH|pwdfd=N[,format=hex|binary]
 * [,mode=aes-cbc|aes-256-cbc][,kdf=pbkdf2|sha512][,remove][,iterations=N]. */
int nvram_key_parse(const char *spec, struct nvram_key *key, struct nv_error *err);

/* The AES-CBC key swtpm makes of this key for its blobs and state files: a
 * raw key as it is; a passphrase through PBKDF2-HMAC-SHA512 (salt "swtpm",
 * 1000 iterations) or, with kdf=sha512, SHA-512; 128 bits, or 256 with
 * mode=aes-256-cbc. Sets *out_len to 16 or 32. */
int nvram_key_swtpm_aes(const struct nvram_key *key, uint8_t out[32], size_t *out_len,
                        struct nv_error *err);

/* Overwrite the key material (OPENSSL_cleanse). */
void nvram_key_wipe(struct nvram_key *key);

/* ---- opening -------------------------------------------------------------------- */

typedef void (*nvram_warn_fn)(void *opaque, const char *message);

struct nvram_options {
    int tpm_version;   /* 1 (TPM 1.2) or 2 (TPM 2.0); 0: whatever the image holds */
    bool format_blank; /* format a blank image (needs tpm_version and ownership) */
    bool just_created; /* this process made the image (bdrv_create, O_EXCL, the
                          NVRAM's NVRAM_MIN_DISK_SIZE preallocated) and owns it
                          since: blank, no leaks, every cluster allocated,
                          without reading it to see */
    const struct nvram_key *key;
    bool keyless;             /* no key is given and none will be added: the NVRAM needs no
                                 locked key pages of its own (a TPM process per VM) */
    enum nvram_cipher cipher; /* for formatting with a key; 0 = AES-256-GCM */
    bool no_sync;             /* commits skip fdatasync (the user's choice) */
    int lock_timeout_ms;      /* waiting for the access lock; 0 = 10000 */
    nvram_warn_fn warn;       /* damaged slots; NULL = print to stderr */
    void *warn_opaque;
};

struct nvram;

/* Open the NVRAM of an open image. Everything about the key is checked before
 * anything is written; only a blank image (with format_blank) is written to.
 * The image stays the caller's: nvram_close does not close it. */
struct nvram *nvram_open(struct bdrv_node *bs, const struct nvram_options *opts,
                         struct nv_error *err);
void nvram_close(struct nvram *nv);
/* Give back what loads and commits leave in memory: the slot buffers' pages
 * and the image's clean cached metadata tables (bdrv_release_memory), read
 * again when needed. For a server that goes idle: a TPM process idles far
 * more than it loads or commits, and a host runs one per VM. */
void nvram_release_memory(struct nvram *nv);
/* Whether a load or commit since the last release left memory to give back. */
bool nvram_holds_memory(const struct nvram *nv);

/* Format bs (blank or not: the caller checked) for tpm_version, encrypted
 * when opts->key is given. */
int nvram_format(struct bdrv_node *bs, const struct nvram_options *opts, struct nv_error *err);

int nvram_tpm_version(const struct nvram *nv);
bool nvram_is_encrypted(const struct nvram *nv);

/* ---- blobs ---------------------------------------------------------------------- */

/* Hold the shared access lock across several loads (nestable). */
int nvram_load_begin(struct nvram *nv, struct nv_error *err);
void nvram_load_end(struct nvram *nv);

/* The current content of blob, malloc'd (the caller frees it), or -ENOENT. */
int nvram_load(struct nvram *nv, enum nvram_blob blob, uint8_t **data, size_t *length,
               struct nv_error *err);
/* Commit: one write of the older slot, then one flush (unless no_sync). */
int nvram_store(struct nvram *nv, enum nvram_blob blob, const uint8_t *data, size_t length,
                struct nv_error *err);
int nvram_delete(struct nvram *nv, enum nvram_blob blob, struct nv_error *err);

/* ---- a TPM's storage: the image, its NVRAM, its ownership ---------------------------- */

/* The one object that owns a TPM's storage (the socket server and the TIS
 * device use it): it creates or opens the image, opens the NVRAM on it, and
 * claims and releases the image's ownership as a migration on shared storage
 * hands it between two processes. Claiming re-reads everything cached above
 * the file (qcow2's header and tables, the superblock, each blob's slots and
 * sequence numbers), so no commit ever builds on another owner's past. */
struct nvram_storage;

struct nvram_storage_options {
    const char *spec;          /* the image: a path, or "fd:NAME" in stash */
    struct fdstash *stash;     /* may be NULL unless spec names a descriptor */
    bool create;               /* a path that does not exist: a new qcow2 image */
    uint64_t create_size;      /* 0: NVRAM_DEFAULT_IMAGE_SIZE */
    unsigned create_mode;      /* 0: 0640 */
    bool open_unowned_if_busy; /* another process owns it: open without ownership
                                * (a migration's destination), claim later */
};

/* The image, opened read-write and owned (or, with open_unowned_if_busy and
 * another owner, not). -EBUSY when another process owns it. */
struct nvram_storage *nvram_storage_open(const struct nvram_storage_options *opts,
                                         struct nv_error *err);
/* The NVRAM on it, opts as for nvram_open; a blank image is formatted only
 * when owned (and opts->format_blank). An image nvram_storage_open made is
 * removed again if this fails (its format did not complete). */
int nvram_storage_open_nvram(struct nvram_storage *st, const struct nvram_options *opts,
                             struct nv_error *err);
struct nvram *nvram_storage_nvram(const struct nvram_storage *st);
const char *nvram_storage_name(const struct nvram_storage *st);
bool nvram_storage_owned(const struct nvram_storage *st);
/* Whether nvram_storage_open made the image. */
bool nvram_storage_created(const struct nvram_storage *st);
/* Take the ownership (a no-op when held), trying retries more times 10 ms
 * apart while another process holds it; everything cached is read anew.
 * -EBUSY when it stays held; on any failure the storage stays unowned. */
int nvram_storage_claim(struct nvram_storage *st, unsigned retries, struct nv_error *err);
/* Give the ownership up: everything flushed, and no write until the next
 * claim (the block layer refuses them). */
int nvram_storage_release(struct nvram_storage *st, struct nv_error *err);
void nvram_storage_close(struct nvram_storage *st);

/* ---- inspection ------------------------------------------------------------------- */

enum nvram_slot_state {
    NVRAM_SLOT_BLANK,
    NVRAM_SLOT_VALID,
    NVRAM_SLOT_DAMAGED,
    NVRAM_SLOT_UNCHECKED, /* encrypted, and no key to check it with */
};

struct nvram_slot_info {
    enum nvram_slot_state state;
    uint64_t sequence;
    uint32_t length;
    enum nvram_cipher cipher;
    bool deleted;
    char problem[128];
};

struct nvram_info {
    int tpm_version;
    enum nvram_cipher cipher;
    bool encrypting;
    uint8_t uuid[16];
    uint64_t generation;
    bool superblock_valid[2];
    bool key_opens; /* the key given opens a slot (when one was given) */
    struct {
        bool used;
        enum nvram_key_kind kind;
        unsigned kek_size;
        uint32_t iterations;
        uint64_t created;
    } keys[NVRAM_KEY_SLOTS];
    struct {
        uint32_t capacity;
        uint64_t offset[2];
        struct nvram_slot_info slot[2];
        int current; /* the slot a load uses, -1: none (absent or both damaged) */
    } blobs[NVRAM_BLOBS];
};

/* Read the NVRAM's structures without changing anything, under the shared
 * access lock. With a key, encrypted slots are authenticated too. Returns
 * -EUCLEAN (with info filled as far as it goes) when there is no valid
 * superblock, -ENODATA for a blank image. */
int nvram_inspect(struct bdrv_node *bs, const struct nvram_key *key, int lock_timeout_ms,
                  struct nvram_info *info, struct nv_error *err);
void nvram_uuid_string(const uint8_t uuid[16], char out[37]);

/* ---- keys and encryption ------------------------------------------------------------ */

/* Add a key slot for new_key (the image opened with a key); returns its index. */
int nvram_key_add(struct nvram *nv, const struct nvram_key *new_key, struct nv_error *err);
/* Remove key slot index; -1: the slot the opening key opened. Never the last. */
int nvram_key_remove(struct nvram *nv, int index, struct nv_error *err);
/* The key slot the opening key opened (-1 for a plain image). */
int nvram_key_slot(const struct nvram *nv);

/* Turn the plain NVRAM of bs (open read-write, owned) into an encrypted one
 * with new_key, so that a crash at any point leaves a loadable image; an
 * interrupted run is finished when new_key opens its key slot. */
int nvram_encrypt(struct bdrv_node *bs, const struct nvram_key *new_key, enum nvram_cipher cipher,
                  const struct nvram_options *opts, struct nv_error *err);

#endif
