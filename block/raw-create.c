/* raw-create.c - a new raw image: a file of the given size, never an
 * existing one overwritten. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int bdrv_raw_create(const char *path, const struct bdrv_create_opts *opts, struct nv_error *err)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, opts->mode ? opts->mode : 0600);
    if (fd < 0)
        return nv_error_set(err, -errno, "%s: cannot create: %s%s", path, strerror(errno),
                            errno == EEXIST ? " (refusing to overwrite it)" : "");
    int r = ftruncate(fd, (off_t)opts->size) < 0 || fsync(fd) < 0 ? -errno : 0;
    close(fd);
    if (r < 0) {
        unlink(path);
        return nv_error_set(err, r, "%s: cannot size the new image: %s", path, strerror(-r));
    }
    return 0;
}
