/* migration.h - moving TPM state in and out: swtpm's state-blob format (the
 * bytes of GET/SET_STATEBLOB, of `swtpm_ioctl --save`, and of swtpm's state
 * files). Below tpm/, above nvram/.
 *
 * A blob is a 10-byte header (version 2, minimum version 1, header size 10,
 * flags, total length; big-endian) followed by TLVs (tag 2 bytes, length 4,
 * value). See docs/migration.md. */
#ifndef NVTPM_MIGRATION_H
#define NVTPM_MIGRATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "nvram.h"
#include "util.h"

/* Header flags. */
#define MIG_FLAG_ENCRYPTED           0x01u /* encrypted with the state key */
#define MIG_FLAG_MIGRATION_ENCRYPTED 0x02u /* encrypted with the migration key */
#define MIG_FLAG_MIGRATION_DATA      0x04u /* the data is inside a migration TLV */
#define MIG_FLAG_STATE_KEY_256       0x08u
#define MIG_FLAG_MIGRATION_KEY_256   0x10u

/* TLV tags. */
enum {
    MIG_TAG_DATA = 1,
    MIG_TAG_ENCRYPTED_DATA = 2,
    MIG_TAG_HMAC = 3,
    MIG_TAG_MIGRATION_DATA = 4,
    MIG_TAG_ENCRYPTED_MIGRATION_DATA = 5,
    MIG_TAG_IVEC = 6,
    MIG_TAG_MIGRATION_IVEC = 7,
};

#define MIG_HEADER_SIZE 10u
#define MIG_BLOB_MAX    (512u * 1024u + 4096u) /* swtpm's limit, with room for wrapping */

/* An AES-CBC key in swtpm's blob encryption (AES-CBC, the plaintext padded
 * to a multiple of the key length with bytes holding the padding's length,
 * then HMAC-SHA256 with the same key over the ciphertext and the IV): 16 or
 * 32 bytes, made from a user's key by nvram_key_swtpm_aes(). */
struct mig_key {
    uint8_t aes[32];
    size_t len;
};

/* The blob key swtpm makes of a user's key (nvram_key_swtpm_aes()). */
int mig_key_from(const struct nvram_key *key, struct mig_key *out, struct nv_error *err);
void mig_key_wipe(struct mig_key *key);

/* A libtpms blob as GET_STATEBLOB returns it: a migration-data blob,
 * encrypted with migration_key unless that is NULL; inside it the state,
 * encrypted with state_key unless that is NULL (swtpm's answer to a client
 * that does not ask for decrypted blobs when it has a --key). */
int mig_blob_wrap(const uint8_t *state, size_t len, const struct mig_key *migration_key,
                  const struct mig_key *state_key, uint8_t **blob, size_t *blob_len,
                  struct nv_error *err);

/* The libtpms blob inside a blob from swtpm or nvtpm (malloc'd). An empty
 * blob (length 0) gives an empty state. A blob encrypted with the migration
 * key (flag 0x02) needs migration_key, one encrypted with the state key (flag
 * 0x01, as swtpm's encrypted state files are) needs state_key: -ENOKEY when
 * it is NULL, -EKEYREJECTED when the HMAC does not match (a wrong key or a
 * damaged blob). A plain blob is accepted with or without keys. */
int mig_blob_unwrap(const uint8_t *blob, size_t len, const struct mig_key *migration_key,
                    const struct mig_key *state_key, uint8_t **state, size_t *state_len,
                    struct nv_error *err);

/* ---- swtpm's state folder (--tpmstate dir=D) ------------------------------- */

/* A TPM's state as libtpms blobs, indexed by enum nvram_blob; data[b] NULL:
 * that blob is absent. */
struct mig_state {
    int tpm_version; /* 1 (TPM 1.2) or 2 (TPM 2.0) */
    uint8_t *data[NVRAM_BLOBS];
    size_t len[NVRAM_BLOBS];
    bool encrypted; /* (read) a file was encrypted with the state key */
};

/* Read dir's state files: swtpm's (tpm2-00.permall, tpm2-00.volatilestate,
 * tpm2-00.savestate; tpm-00.* for TPM 1.2) or, where one is missing, a blob
 * saved with GET_STATEBLOB (permanent, volatile, savestate). tpm_version 0
 * takes the version whose files are there (TPM 2.0 when only GET_STATEBLOB's
 * names are). Keys as for mig_blob_unwrap. -ENOENT when dir holds no state
 * file, -EINVAL when it holds both versions' files and tpm_version is 0;
 * messages name the file. */
int mig_dir_read(const char *dir, int tpm_version, const struct mig_key *migration_key,
                 const struct mig_key *state_key, struct mig_state *st, struct nv_error *err);

/* Write st's blobs into the folder dir as swtpm's state files (mode 0600),
 * encrypted with state_key unless it is NULL. Each file is written to a
 * temporary name, synced and renamed, then the folder is synced. Without
 * replace it refuses with -EEXIST, before writing anything, when a state file
 * of st's version is already there, and on a failure removes the files it
 * wrote. With replace, st's version's files are replaced, those st lacks
 * removed, in an order that leaves a consistent state at every crash: the
 * old volatile and saved state go first, then the new permall, then the
 * rest. */
int mig_dir_write(const char *dir, const struct mig_state *st, const struct mig_key *state_key,
                  bool replace, struct nv_error *err);

/* swtpm's own state files of one TPM version in dir (tpm2-00.permall,
 * .volatilestate, .savestate; tpm-00.* for TPM 1.2). */
struct mig_dir_files {
    unsigned present;            /* bit (1 << blob) per file there */
    long long size[NVRAM_BLOBS]; /* each file's size */
    struct timespec newest;      /* the latest modification time among them */
};
/* What is there (present 0: none); an error only when dir cannot be read. */
int mig_dir_files(const char *dir, int tpm_version, struct mig_dir_files *out,
                  struct nv_error *err);
/* swtpm's file name of a blob: "tpm2-00.permall" and so on. */
const char *mig_dir_file_name(int tpm_version, int blob, char *out, size_t size);

/* Take dir/.lock as swtpm does (a write lock on the whole file, which is made
 * with mode if missing: *created says so), so that swtpm and nvtpm never serve one folder at
 * once. An open-file-description lock: it stays with *fd across fork
 * (--daemon) until *fd is closed. -EBUSY, naming the holder, when it is held. */
int mig_dir_lock(const char *dir, unsigned mode, int *fd, bool *created, struct nv_error *err);

void mig_state_free(struct mig_state *st);

/* fsync a folder, so that what was created or renamed in it is durable. */
int mig_sync_dir(const char *dir, struct nv_error *err);

/* -EBUSY when a running swtpm uses dir: it holds a lock on dir/.lock while it
 * runs. 0 otherwise (no such file included). */
int mig_dir_check_unused(const char *dir, struct nv_error *err);

#endif
