/* statedir.c - swtpm's state folder (--tpmstate dir=D): one file per blob,
 * each a blob in swtpm's format, plain or encrypted with the state key.
 * Files of swtpm's older format (no header: the state as it is, or encrypted
 * by mig_cbc_open_v1's rule) are read too. Reading is for `nvtpm import` and
 * `nvtpm validate --blobs`; writing, for
 * `nvtpm export`, is crash-safe per file (temporary name, fsync, rename, fsync
 * of the folder) and replaces state files only when asked. The folder's
 * .lock is taken as swtpm takes it, for `nvtpm socket --tpmstate dir=`. */
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
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
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
    bool old_format = r == 0 && raw_len && !mig_has_header(raw, raw_len);
    if (old_format && state_key) /* swtpm takes a file as encrypted when given a key */
        r = mig_cbc_open_v1(state_key, raw, raw_len, &st->data[blob], &st->len[blob], err);
    else if (r == 0 && !old_format)
        r = mig_blob_unwrap(raw, raw_len, migration_key, state_key, &st->data[blob], &st->len[blob],
                            err);
    if (r < 0 && raw)
        nv_error_prefix(err, r, "%s", path);
    if (r == 0 &&
        (old_format ? state_key != NULL
                    : raw_len >= MIG_HEADER_SIZE && (nv_be16(raw + 4) & MIG_FLAG_ENCRYPTED)))
        st->encrypted = true;
    if (old_format && !state_key) { /* the file is the state as it is */
        st->data[blob] = raw;
        st->len[blob] = raw_len;
        return 0;
    }
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
            return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
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

static int lock_holder_error(const char *dir, const struct flock *fl, struct nv_error *err);

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
    else if (fl.l_type != F_UNLCK)
        r = lock_holder_error(dir, &fl, err);
    close(fd);
    return r;
}

const char *mig_dir_file_name(int tpm_version, int blob, char *out, size_t size)
{
    snprintf(out, size, "%s.%s", tpm_version == 2 ? "tpm2-00" : "tpm-00", swtpm_suffix[blob]);
    return out;
}

int mig_dir_files(const char *dir, int tpm_version, struct mig_dir_files *out, struct nv_error *err)
{
    *out = (struct mig_dir_files){0};
    char path[PATH_MAX];
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        struct stat st;
        swtpm_path(path, sizeof(path), dir, tpm_version, b);
        if (lstat(path, &st) < 0) {
            if (errno == ENOENT)
                continue;
            return nv_error_set(err, -errno, "%s: %s", path, strerror(errno));
        }
        out->present |= 1u << b;
        out->size[b] = (long long)st.st_size;
        if (st.st_mtim.tv_sec > out->newest.tv_sec ||
            (st.st_mtim.tv_sec == out->newest.tv_sec && st.st_mtim.tv_nsec > out->newest.tv_nsec))
            out->newest = st.st_mtim;
    }
    return 0;
}

/* Who holds a lock that conflicts with fl (F_OFD_GETLK's answer). */
static int lock_holder_error(const char *dir, const struct flock *fl, struct nv_error *err)
{
    if (fl->l_pid > 0)
        return nv_error_set_status(err, NV_STATUS_BUSY, -EBUSY,
                                   "%s is in use: process %d (swtpm, or an nvtpm) holds its .lock",
                                   dir, (int)fl->l_pid);
    return nv_error_set_status(err, NV_STATUS_BUSY, -EBUSY,
                               "%s is in use: a process holds its .lock", dir);
}

int mig_dir_lock(const char *dir, unsigned mode, int *fd, bool *created, struct nv_error *err)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/.lock", dir);
    *fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    *created = *fd >= 0;
    if (*fd < 0 && errno == EEXIST)
        *fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (*fd < 0)
        return nv_error_set(err, -errno, "%s: %s", path, strerror(errno));
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(*fd, F_OFD_SETLK, &fl) == 0)
        return 0;
    int r = -errno;
    if (r == -EAGAIN || r == -EACCES) {
        fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET};
        r = fcntl(*fd, F_OFD_GETLK, &fl) == 0
                ? lock_holder_error(dir, &fl, err)
                : nv_error_set_status(err, NV_STATUS_BUSY, -EBUSY, "%s: locked", path);
    } else {
        nv_error_set(err, r, "%s: %s", path, strerror(-r));
    }
    close(*fd);
    *fd = -1;
    return r;
}

void mig_state_free(struct mig_state *st)
{
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        if (st->data[b])
            nv_wipe(st->data[b], st->len[b]);
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

/* One state file: a temporary name in the same folder, synced, then linked
 * to path (a file that appeared meanwhile stays) or, to replace, renamed. */
static int write_one(const char *path, const uint8_t *blob, size_t len, bool replace,
                     struct nv_error *err)
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
    if (r == 0 && (replace ? rename(tmp, path) : link(tmp, path)) < 0)
        r = -errno;
    if (!replace || r < 0)
        unlink(tmp);
    return r < 0 ? nv_error_set(err, r, "%s: %s", path, strerror(-r)) : 0;
}

int mig_sync_dir(const char *dir, struct nv_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r = fd < 0 || fsync(fd) < 0 ? -errno : 0;
    if (fd >= 0)
        close(fd);
    return r < 0 ? nv_error_set(err, r, "%s: %s", dir, strerror(-r)) : 0;
}

/* Replace st's version's files: the volatile and saved state (old ones
 * removed, so they never pair with the new permall), then the permall, then
 * the new volatile and saved state. */
static int replace_files(const char *dir, const struct mig_state *st,
                         uint8_t *const blob[NVRAM_BLOBS], const size_t blob_len[NVRAM_BLOBS],
                         struct nv_error *err)
{
    char path[PATH_MAX];
    for (int b = NVRAM_PERMALL + 1; b < NVRAM_BLOBS; b++) {
        swtpm_path(path, sizeof(path), dir, st->tpm_version, b);
        if (unlink(path) < 0 && errno != ENOENT)
            return nv_error_set(err, -errno, "%s: %s", path, strerror(errno));
    }
    int r = mig_sync_dir(dir, err);
    for (int b = 0; b < NVRAM_BLOBS && r == 0; b++) {
        if (!blob[b])
            continue;
        swtpm_path(path, sizeof(path), dir, st->tpm_version, b);
        r = write_one(path, blob[b], blob_len[b], true, err);
    }
    return r == 0 ? mig_sync_dir(dir, err) : r;
}

/* New files only: none of st's version may be there; undone on a failure. */
static int add_files(const char *dir, const struct mig_state *st, uint8_t *const blob[NVRAM_BLOBS],
                     const size_t blob_len[NVRAM_BLOBS], struct nv_error *err)
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
        swtpm_path(path, sizeof(path), dir, st->tpm_version, b);
        if (blob[b])
            r = write_one(path, blob[b], blob_len[b], false, err);
        written[b] = blob[b] && r == 0;
    }
    if (r == 0)
        r = mig_sync_dir(dir, err);
    for (int b = 0; b < NVRAM_BLOBS && r < 0; b++) {
        swtpm_path(path, sizeof(path), dir, st->tpm_version, b);
        if (written[b])
            unlink(path);
    }
    return r;
}

int mig_dir_write(const char *dir, const struct mig_state *st, const struct mig_key *state_key,
                  bool replace, struct nv_error *err)
{
    uint8_t *blob[NVRAM_BLOBS] = {NULL};
    size_t blob_len[NVRAM_BLOBS] = {0};
    int r = 0;
    for (int b = 0; b < NVRAM_BLOBS && r == 0; b++)
        if (st->data[b])
            r = mig_file_wrap(st->data[b], st->len[b], state_key, &blob[b], &blob_len[b], err);
    if (r == 0)
        r = replace ? replace_files(dir, st, blob, blob_len, err)
                    : add_files(dir, st, blob, blob_len, err);
    for (int b = 0; b < NVRAM_BLOBS; b++)
        free(blob[b]);
    return r;
}
