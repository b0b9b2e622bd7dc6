/* statedir.c - swtpm's state folder (--tpmstate dir=D): one file per blob,
 * each a blob in swtpm's format, plain or encrypted with the state key.
 * Reading is for `nvtpm import` and `nvtpm validate --blobs`; writing, for
 * `nvtpm export`, is crash-safe per file (temporary name, fsync, rename, fsync
 * of the folder) and never replaces a state file that is already there. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Per blob: swtpm's file suffix, and the name `swtpm_ioctl --save` users
 * give GET_STATEBLOB's blobs. */
static const char *const swtpm_suffix[NVRAM_BLOBS] = {"permall", "volatilestate", "savestate"};
static const char *const saved_name[NVRAM_BLOBS] = {"permanent", "volatile", "savestate"};

static void swtpm_path(char *out, size_t size, const char *dir, int tpm_version, int blob)
{
    snprintf(out, size, "%s/%s.%s", dir, tpm_version == 2 ? "tpm2-00" : "tpm-00",
             swtpm_suffix[blob]);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static bool version_present(const char *dir, int tpm_version)
{
    char path[PATH_MAX];
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        swtpm_path(path, sizeof(path), dir, tpm_version, b);
        if (exists(path))
            return true;
    }
    return false;
}

/* The whole of one file, at most MIG_BLOB_MAX bytes. */
static int read_file(const char *path, uint8_t **data, size_t *len, struct nv_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nv_error_set(err, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    int r = fstat(fd, &st) < 0     ? nv_error_set(err, -errno, "%s: %s", path, strerror(errno))
            : !S_ISREG(st.st_mode) ? nv_error_set(err, -EINVAL, "%s: not a regular file", path)
            : st.st_size > (off_t)MIG_BLOB_MAX
                ? nv_error_set(err, -EFBIG, "%s: %lld bytes, more than a state blob can hold", path,
                               (long long)st.st_size)
                : 0;
    *data = r == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    if (r == 0 && !*data)
        r = nv_error_set(err, -ENOMEM, "out of memory");
    size_t have = 0;
    while (r == 0 && have < (size_t)st.st_size) {
        ssize_t n = read(fd, *data + have, (size_t)st.st_size - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            r = nv_error_set(err, n < 0 ? -errno : -EIO, "%s: %s", path,
                             n < 0 ? strerror(errno) : "shorter than it was a moment ago");
        else
            have += (size_t)n;
    }
    close(fd);
    if (r < 0) {
        free(*data);
        *data = NULL;
    }
    *len = have;
    return r;
}

static int read_one(const char *path, const struct mig_key *migration_key,
                    const struct mig_key *state_key, struct mig_state *st, int blob,
                    struct nv_error *err)
{
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    int r = read_file(path, &raw, &raw_len, err);
    if (r == 0)
        r = mig_blob_unwrap(raw, raw_len, migration_key, state_key, &st->data[blob], &st->len[blob],
                            err);
    if (r < 0 && raw)
        nv_error_prefix(err, r, "%s", path);
    if (r == 0 && raw_len >= MIG_HEADER_SIZE && (nv_be16(raw + 4) & MIG_FLAG_ENCRYPTED))
        st->encrypted = true;
    free(raw);
    return r;
}

int mig_dir_read(const char *dir, int tpm_version, const struct mig_key *migration_key,
                 const struct mig_key *state_key, struct mig_state *st, struct nv_error *err)
{
    *st = (struct mig_state){.tpm_version = tpm_version};
    struct stat ds;
    if (stat(dir, &ds) < 0)
        return nv_error_set(err, -errno, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(ds.st_mode))
        return nv_error_set(err, -ENOTDIR, "%s: not a folder", dir);
    if (!tpm_version) {
        bool v2 = version_present(dir, 2), v1 = version_present(dir, 1);
        if (v1 && v2)
            return nv_error_set(err, -EINVAL,
                                "%s holds TPM 2.0 (tpm2-00.*) and TPM 1.2 (tpm-00.*) state "
                                "files; say which",
                                dir);
        st->tpm_version = v1 ? 1 : 2;
    }
    int found = 0, r = 0;
    char path[PATH_MAX];
    for (int b = 0; b < NVRAM_BLOBS && r == 0; b++) {
        swtpm_path(path, sizeof(path), dir, st->tpm_version, b);
        if (!exists(path))
            snprintf(path, sizeof(path), "%s/%s", dir, saved_name[b]);
        if (!exists(path))
            continue;
        r = read_one(path, migration_key, state_key, st, b, err);
        found++;
    }
    if (r == 0 && !found)
        r = nv_error_set(err, -ENOENT,
                         "%s holds no TPM %s state file (%s-00.permall, .volatilestate, "
                         ".savestate)",
                         dir, st->tpm_version == 2 ? "2.0" : "1.2",
                         st->tpm_version == 2 ? "tpm2" : "tpm");
    if (r < 0)
        mig_state_free(st);
    return r;
}

int mig_dir_check_unused(const char *dir, struct nv_error *err)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/.lock", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 0 : nv_error_set(err, -errno, "%s: %s", path, strerror(errno));
    /* Would a write lock on the whole file conflict? swtpm takes one (POSIX). */
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    int r = fcntl(fd, F_OFD_GETLK, &fl) < 0 ? -errno : 0;
    if (r < 0)
        nv_error_set(err, r, "%s: %s", path, strerror(-r));
    else if (fl.l_type != F_UNLCK && fl.l_pid > 0)
        r = nv_error_set(err, -EBUSY, "%s is in use: swtpm (pid %d) holds its .lock", dir,
                         (int)fl.l_pid);
    else if (fl.l_type != F_UNLCK)
        r = nv_error_set(err, -EBUSY, "%s is in use: a process holds its .lock", dir);
    close(fd);
    return r;
}

void mig_state_free(struct mig_state *st)
{
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        if (st->data[b])
            mig_wipe(st->data[b], st->len[b]);
        free(st->data[b]);
        st->data[b] = NULL;
        st->len[b] = 0;
    }
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One state file: a temporary name in the same folder, synced, renamed. */
static int write_one(const char *path, const uint8_t *blob, size_t len, struct nv_error *err)
{
    char tmp[PATH_MAX + 16];
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600 */
    if (fd < 0)
        return nv_error_set(err, -errno, "%s: %s", tmp, strerror(errno));
    int r = write_all(fd, blob, len);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    /* link+unlink, not rename: a state file that appeared meanwhile stays */
    if (r == 0 && link(tmp, path) < 0)
        r = -errno;
    unlink(tmp);
    return r < 0 ? nv_error_set(err, r, "%s: %s", path, strerror(-r)) : 0;
}

static int sync_dir(const char *dir, struct nv_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r = fd < 0 || fsync(fd) < 0 ? -errno : 0;
    if (fd >= 0)
        close(fd);
    return r < 0 ? nv_error_set(err, r, "%s: %s", dir, strerror(-r)) : 0;
}

int mig_dir_write(const char *dir, const struct mig_state *st, const struct mig_key *state_key,
                  struct nv_error *err)
{
    char path[PATH_MAX];
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        swtpm_path(path, sizeof(path), dir, st->tpm_version, b);
        if (exists(path))
            return nv_error_set(err, -EEXIST, "%s exists; state files are never overwritten", path);
    }
    bool written[NVRAM_BLOBS] = {false};
    int r = 0;
    for (int b = 0; b < NVRAM_BLOBS && r == 0; b++) {
        if (!st->data[b])
            continue;
        uint8_t *blob = NULL;
        size_t blob_len = 0;
        swtpm_path(path, sizeof(path), dir, st->tpm_version, b);
        r = mig_file_wrap(st->data[b], st->len[b], state_key, &blob, &blob_len, err);
        if (r == 0)
            r = write_one(path, blob, blob_len, err);
        written[b] = r == 0;
        free(blob);
    }
    if (r == 0)
        r = sync_dir(dir, err);
    for (int b = 0; b < NVRAM_BLOBS && r < 0; b++) {
        swtpm_path(path, sizeof(path), dir, st->tpm_version, b);
        if (written[b])
            unlink(path);
    }
    return r;
}
