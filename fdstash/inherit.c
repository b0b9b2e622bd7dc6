/* inherit.c - descriptors handed over at start-up: fd=N references and
 * systemd-style socket activation (LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES). */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* The first descriptor socket activation passes (SD_LISTEN_FDS_START). */
#define LISTEN_FDS_START 3

int fdstash_parse_fd(const char *text, int *fd, struct nv_error *err)
{
    const char *digits = text ? text : "";
    if (strncmp(digits, "fd=", 3) == 0)
        digits += 3;
    uint64_t value;
    int ret = nv_parse_u64(digits, INT_MAX, &value);
    if (ret < 0)
        return nv_error_set(err, ret, "'%s' is not a descriptor number (want N or fd=N)",
                            text ? text : "");
    *fd = (int)value;
    return 0;
}

static const char *kind_names(unsigned kinds, char *buf, size_t size)
{
    static const char *const names[] = {"a listening socket", "a connected socket",
                                        "a regular file or block device", "a character device"};
    buf[0] = '\0';
    size_t used = 0;
    for (unsigned i = 0; i < 4; i++) {
        if (!(kinds & (1u << i)))
            continue;
        int n = snprintf(buf + used, size - used, "%s%s", used ? " or " : "", names[i]);
        if (n < 0 || (size_t)n >= size - used)
            break;
        used += (size_t)n;
    }
    return buf;
}

/* Which kind a socket is: listening, connected, or neither (0). */
static unsigned socket_kind(int fd)
{
    int type = 0, listening = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        (type != SOCK_STREAM && type != SOCK_DGRAM && type != SOCK_SEQPACKET))
        return 0;
    len = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening)
        return FDSTASH_LISTENING_SOCKET;
    struct sockaddr_storage peer;
    len = sizeof(peer);
    if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0)
        return FDSTASH_CONNECTED_SOCKET;
    return 0;
}

int fdstash_check_fd(int fd, unsigned kinds, struct nv_error *err)
{
    char want[128];
    if (fd < 0 || fcntl(fd, F_GETFD) < 0)
        return nv_error_set(err, -EBADF, "descriptor %d is not open", fd);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return nv_error_set(err, -errno, "descriptor %d: %s", fd, strerror(errno));
    unsigned is = 0;
    if (S_ISSOCK(st.st_mode))
        is = socket_kind(fd);
    else if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))
        is = FDSTASH_FILE;
    else if (S_ISCHR(st.st_mode))
        is = FDSTASH_CHAR_DEVICE;
    if (!(is & kinds))
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "descriptor %d is not %s", fd,
                                   kind_names(kinds, want, sizeof(want)));
    return 0;
}

static int set_cloexec(int fd, struct nv_error *err)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return nv_error_set(err, -errno, "descriptor %d: cannot set close-on-exec: %s", fd,
                            strerror(errno));
    return 0;
}

int fdstash_inherit(struct fdstash *stash, const char *text, unsigned kinds, struct nv_error *err)
{
    int fd, ret;
    if ((ret = fdstash_parse_fd(text, &fd, err)) < 0 ||
        (ret = fdstash_check_fd(fd, kinds, err)) < 0 || (ret = set_cloexec(fd, err)) < 0)
        return ret;
    char name[16];
    snprintf(name, sizeof(name), "%d", fd);
    if (fdstash_peek(stash, name) == fd)
        return fd; /* adopted already */
    ret = fdstash_store(stash, name, fd, err);
    return ret < 0 ? ret : fd;
}

/* ---- socket activation -------------------------------------------------- */

/* The name of the i-th activated descriptor, from the colon-separated list. */
static int listen_fd_name(const char *names, unsigned index, char *out, size_t size)
{
    const char *p = names;
    for (unsigned i = 0; p && i < index; i++) {
        p = strchr(p, ':');
        if (p)
            p++;
    }
    size_t len = 0;
    if (p) {
        const char *end = strchr(p, ':');
        len = end ? (size_t)(end - p) : strlen(p);
    }
    if (len == 0) {
        snprintf(out, size, "listen-%u", index);
        return 0;
    }
    if (len >= size)
        return -ENAMETOOLONG;
    memcpy(out, p, len);
    out[len] = '\0';
    return 0;
}

static void unset_listen_env(void)
{
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
}

/* Validate every activated descriptor and name before the stash owns any. */
static int check_listen_fds(const struct fdstash *stash, unsigned count, const char *names,
                            struct nv_error *err)
{
    char name[FDSTASH_NAME_MAX + 1], other[FDSTASH_NAME_MAX + 1];
    for (unsigned i = 0; i < count; i++) {
        int fd = LISTEN_FDS_START + (int)i;
        if (fcntl(fd, F_GETFD) < 0)
            return nv_error_set(err, -EBADF, "LISTEN_FDS: descriptor %d is not open", fd);
        if (listen_fd_name(names, i, name, sizeof(name)) < 0)
            return nv_error_set(err, -ENAMETOOLONG, "LISTEN_FDNAMES: name %u is too long", i);
        int ret = fdstash_check_name(name, err);
        if (ret < 0)
            return nv_error_prefix(err, ret, "LISTEN_FDNAMES");
        if (fdstash_peek(stash, name) >= 0)
            return nv_error_set(err, -EEXIST,
                                "LISTEN_FDNAMES: a descriptor named '%s' is stashed already", name);
        for (unsigned j = 0; j < i; j++) {
            listen_fd_name(names, j, other, sizeof(other));
            if (strcmp(name, other) == 0)
                return nv_error_set(err, -EEXIST,
                                    "LISTEN_FDNAMES names descriptors %d and %d both '%s'; "
                                    "give each socket its own FileDescriptorName=",
                                    LISTEN_FDS_START + (int)j, fd, name);
        }
    }
    return 0;
}

int fdstash_import_listen_fds(struct fdstash *stash, struct nv_error *err)
{
    const char *pid_text = getenv("LISTEN_PID");
    const char *count_text = getenv("LISTEN_FDS");
    uint64_t pid, count;
    if (!pid_text || !count_text)
        return 0;
    if (nv_parse_u64(pid_text, INT_MAX, &pid) < 0)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "LISTEN_PID '%s' is not a process id", pid_text);
    if ((pid_t)pid != getpid())
        return 0;
    if (nv_parse_u64(count_text, 1024, &count) < 0)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "LISTEN_FDS '%s' is not a count of at most 1024", count_text);
    const char *names = getenv("LISTEN_FDNAMES");
    int ret = check_listen_fds(stash, (unsigned)count, names, err);
    if (ret < 0)
        return ret;
    char name[FDSTASH_NAME_MAX + 1];
    unsigned i;
    for (i = 0; i < count; i++) {
        int fd = LISTEN_FDS_START + (int)i;
        listen_fd_name(names, i, name, sizeof(name));
        if ((ret = set_cloexec(fd, err)) < 0 || (ret = fdstash_store(stash, name, fd, err)) < 0)
            break;
    }
    if (ret < 0) { /* all or nothing: hand back what was adopted, unclosed */
        while (i-- > 0) {
            listen_fd_name(names, i, name, sizeof(name));
            fdstash_take(stash, name);
        }
        return ret;
    }
    unset_listen_env();
    return (int)count;
}
