/* recv.c - receiving descriptors over a UNIX socket (SCM_RIGHTS) without leaks.
 *
 * The control buffer has room for FDSTASH_RECV_SURPLUS descriptors more than
 * the caller wants, so a sender that sends a few too many is seen and its
 * descriptors closed; one that sends far too many makes the kernel truncate
 * the control data (MSG_CTRUNC), and whatever did arrive is closed too. */
#include "fdstash.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Copy the descriptors of every SCM_RIGHTS header into got[], up to cap. The
 * kernel installs a descriptor for each int in the header, so we count all. */
static size_t collect_fds(struct msghdr *msg, int *got, size_t cap, size_t *total)
{
    size_t n = 0;
    *total = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (n < cap)
                got[n++] = fd;
            else
                close(fd); /* cannot happen with cap sized to the buffer */
            (*total)++;
        }
    }
    return n;
}

static void close_all(const int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
}

/* fdstash_recvmsg with the control buffer ctl (CMSG_SPACE of cap ints) and
 * room for cap descriptors in received. */
static ssize_t recv_with(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *nfds,
                         unsigned char *ctl, int *received, struct nv_error *err)
{
    size_t cap = max_fds + FDSTASH_RECV_SURPLUS;
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = ctl,
                         .msg_controllen = CMSG_SPACE(cap * sizeof(int))};

    ssize_t got;
    do {
        got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    if (got < 0)
        return nv_error_set(err, -errno, "receiving on socket %d: %s", sock, strerror(errno));

    size_t total;
    size_t n = collect_fds(&msg, received, cap, &total);
    if (msg.msg_flags & MSG_CTRUNC) {
        close_all(received, n);
        return nv_error_set_status(err, NV_STATUS_IO, -EMSGSIZE, /* not a too small image */
                                   "socket %d: descriptors truncated (control data did not fit; "
                                   "at most %zu expected)",
                                   sock, max_fds);
    }
    if (n > max_fds) {
        close_all(received, n);
        return nv_error_set(err, -E2BIG,
                            "socket %d: received %zu descriptors, at most %zu expected", sock,
                            total, max_fds);
    }
    memcpy(fds, received, n * sizeof(int));
    *nfds = n;
    return got;
}

/* Room on the stack for a few descriptors (the control channel takes one);
 * more in a heap buffer: the common call keeps the stack shallow, whose
 * deepest pages stay resident in a long-running server. */
#define SMALL_CAP (16 + FDSTASH_RECV_SURPLUS)

ssize_t fdstash_recvmsg(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *nfds,
                        struct nv_error *err)
{
    *nfds = 0;
    if (len == 0 || max_fds > 1024)
        return nv_error_set(err, -EINVAL,
                            "fdstash_recvmsg: need data space and at most "
                            "1024 descriptors");
    size_t cap = max_fds + FDSTASH_RECV_SURPLUS;
    if (cap <= SMALL_CAP) {
        union {
            struct cmsghdr align;
            unsigned char bytes[CMSG_SPACE(SMALL_CAP * sizeof(int))];
        } ctl;
        int received[SMALL_CAP];
        return recv_with(sock, buf, len, fds, max_fds, nfds, ctl.bytes, received, err);
    }
    size_t space = CMSG_SPACE(cap * sizeof(int)); /* (a multiple of size_t: ints align after) */
    unsigned char *heap = malloc(space + cap * sizeof(int));
    if (!heap)
        return nv_error_set(err, -ENOMEM, "receiving on socket %d: out of memory", sock);
    ssize_t r =
        recv_with(sock, buf, len, fds, max_fds, nfds, heap, (int *)(void *)(heap + space), err);
    free(heap);
    return r;
}
