/* listen.c - the server's sockets: TCP (127.0.0.1 unless told), UNIX (mode
 * 0600 unless told) and inherited descriptors (seed 004: the management side
 * creates the socket and connects once, no retry loop). */
#include "server-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fdstash.h"

static int listen_tcp(const struct tpm_channel_config *c, const char *what, struct nv_error *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV},
                    *res;
    char port[16];
    const char *addr = c->bindaddr ? c->bindaddr : "127.0.0.1";
    snprintf(port, sizeof(port), "%u", c->port);
    int e = getaddrinfo(addr, port, &hints, &res);
    if (e)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "%s: bind address %s: %s", what,
                                   addr, gai_strerror(e));
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    int r = fd < 0 ? -errno : 0;
    if (r == 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (r == 0 && (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 8) < 0))
        r = -errno;
    freeaddrinfo(res);
    if (r < 0) {
        if (fd >= 0)
            close(fd);
        return nv_error_set(err, r, "%s: cannot listen on %s port %u: %s", what, addr, c->port,
                            strerror(-r));
    }
    return fd;
}

/* The socket is made listening under a temporary name and renamed into
 * place: whoever sees the file (libvirt polls for it) can connect at once,
 * where a bind before listen would leave a moment of "connection refused".
 * The rename also replaces a stale socket of an earlier run. */
static int listen_unix(const struct tpm_channel_config *c, const char *what, struct nv_error *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(c->path) >= sizeof(sa.sun_path))
        return nv_error_set(err, -ENAMETOOLONG, "%s: socket path %s is too long", what, c->path);
    struct stat st;
    if (lstat(c->path, &st) == 0 && !S_ISSOCK(st.st_mode))
        return nv_error_set(err, -EEXIST, "%s: %s exists and is not a socket", what, c->path);
    bool renamed = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.%d", c->path, (int)getpid()) <
                   (int)sizeof(sa.sun_path);
    if (!renamed) { /* no room for a temporary name: bind in place */
        strcpy(sa.sun_path, c->path);
        unlink(c->path);
    }
    unlink(sa.sun_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int r = fd < 0 ? -errno : 0;
    if (r == 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        r = -errno;
    if (r == 0 &&
        (chmod(sa.sun_path, c->mode ? c->mode : 0600) < 0 ||
         ((c->uid >= 0 || c->gid >= 0) && chown(sa.sun_path, (uid_t)c->uid, (gid_t)c->gid) < 0) ||
         listen(fd, 8) < 0 || (renamed && rename(sa.sun_path, c->path) < 0)))
        r = -errno;
    if (r < 0) {
        if (fd >= 0) {
            close(fd);
            unlink(sa.sun_path);
        }
        return nv_error_set(err, r, "%s: cannot listen on %s: %s", what, c->path, strerror(-r));
    }
    return fd;
}

/* An inherited socket: listening, or (CLIENTFD, or FD for data) connected. */
static int inherited(const struct tpm_channel_config *c, const char *what, bool is_data,
                     bool *connected, struct nv_error *err)
{
    unsigned kinds = c->type == TPM_CHANNEL_CLIENTFD
                         ? FDSTASH_CONNECTED_SOCKET
                         : FDSTASH_LISTENING_SOCKET | FDSTASH_CONNECTED_SOCKET |
                               (is_data ? FDSTASH_CHAR_DEVICE : 0);
    int r = fdstash_check_fd(c->fd, kinds, err);
    if (r < 0)
        return nv_error_prefix(err, r, "%s", what);
    int yes = 0;
    socklen_t len = sizeof(yes);
    getsockopt(c->fd, SOL_SOCKET, SO_ACCEPTCONN, &yes, &len);
    *connected = !yes;
    fcntl(c->fd, F_SETFD, FD_CLOEXEC);
    return c->fd;
}

int server_open_channel(const struct tpm_channel_config *c, const char *what, bool is_data,
                        bool *connected, struct nv_error *err)
{
    *connected = false;
    switch (c->type) {
    case TPM_CHANNEL_TCP:
        return listen_tcp(c, what, err);
    case TPM_CHANNEL_UNIX:
        return listen_unix(c, what, err);
    case TPM_CHANNEL_FD:
    case TPM_CHANNEL_CLIENTFD:
        return inherited(c, what, is_data, connected, err);
    default:
        return -1;
    }
}
