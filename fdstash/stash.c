/* stash.c - the stash itself: a list of named descriptors it owns. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fdstash_entry {
    struct fdstash_entry *next;
    int fd;
    char name[];
};

void fdstash_init(struct fdstash *stash)
{
    stash->head = NULL;
    stash->count = 0;
}

void fdstash_cleanup(struct fdstash *stash)
{
    struct fdstash_entry *e = stash->head;
    while (e) {
        struct fdstash_entry *next = e->next;
        close(e->fd);
        free(e);
        e = next;
    }
    fdstash_init(stash);
}

/* Names of numeric descriptors ("3") are made by fdstash itself, so the check
 * that user names do not start with a digit lives apart from the rest. */
static int check_name_chars(const char *name, struct nv_error *err)
{
    if (!name || !*name)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "descriptor name is empty");
    size_t len = strnlen(name, FDSTASH_NAME_MAX + 1);
    if (len > FDSTASH_NAME_MAX)
        return nv_error_set(err, -ENAMETOOLONG, "descriptor name is longer than %d bytes",
                            FDSTASH_NAME_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x21 || c > 0x7e)
            return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                       "descriptor name has a non-printable byte 0x%02x at %zu", c,
                                       i);
    }
    return 0;
}

int fdstash_check_name(const char *name, struct nv_error *err)
{
    int ret = check_name_chars(name, err);
    if (ret < 0)
        return ret;
    if (name[0] >= '0' && name[0] <= '9')
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "descriptor name '%s' starts with a digit; such names are "
                                   "reserved for numeric descriptors",
                                   name);
    return 0;
}

static struct fdstash_entry **find_link(const struct fdstash *stash, const char *name)
{
    struct fdstash_entry **link = (struct fdstash_entry **)&stash->head;
    while (*link && strcmp((*link)->name, name) != 0)
        link = &(*link)->next;
    return link;
}

int fdstash_store(struct fdstash *stash, const char *name, int fd, struct nv_error *err)
{
    int ret = check_name_chars(name, err);
    if (ret == 0 && fd < 0)
        ret = nv_error_set(err, -EBADF, "cannot stash invalid descriptor %d as '%s'", fd, name);
    if (ret < 0)
        return ret;
    struct fdstash_entry **link = find_link(stash, name);
    if (*link) {
        if ((*link)->fd != fd)
            close((*link)->fd);
        (*link)->fd = fd;
        return 0;
    }
    size_t len = strlen(name);
    struct fdstash_entry *e = malloc(sizeof(*e) + len + 1);
    if (!e)
        return nv_error_set(err, -ENOMEM, "out of memory stashing descriptor '%s'", name);
    memcpy(e->name, name, len + 1);
    e->fd = fd;
    e->next = stash->head;
    stash->head = e;
    stash->count++;
    return 0;
}

int fdstash_give(struct fdstash *stash, const char *name, int fd, struct nv_error *err)
{
    int ret = fdstash_check_name(name, err);
    if (ret == 0)
        ret = fdstash_store(stash, name, fd, err);
    if (ret < 0 && fd >= 0)
        close(fd); /* ownership passed to us even though we fail */
    return ret;
}

int fdstash_take(struct fdstash *stash, const char *name)
{
    if (!name)
        return -ENOENT;
    struct fdstash_entry **link = find_link(stash, name);
    struct fdstash_entry *e = *link;
    if (!e)
        return -ENOENT;
    int fd = e->fd;
    *link = e->next;
    free(e);
    stash->count--;
    return fd;
}

int fdstash_peek(const struct fdstash *stash, const char *name)
{
    if (!name)
        return -ENOENT;
    struct fdstash_entry *e = *find_link(stash, name);
    return e ? e->fd : -ENOENT;
}

size_t fdstash_count(const struct fdstash *stash)
{
    return stash->count;
}

int fdstash_dup(int fd, struct nv_error *err)
{
    int copy;
    do {
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    } while (copy < 0 && errno == EINTR);
    if (copy < 0)
        return nv_error_set(err, -errno, "cannot duplicate descriptor %d: %s", fd, strerror(errno));
    return copy;
}
