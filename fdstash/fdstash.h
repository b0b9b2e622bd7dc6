/* fdstash.h - named file descriptors: the lowest layer of nvtpm.
 *
 * A stash owns descriptors under names. They arrive three ways: inherited at
 * start-up (fd=N, or systemd-style socket activation), received over a UNIX
 * socket (SCM_RIGHTS), or dup'd by the block layer so that a reopen can fall
 * back to the descriptors it had. Every descriptor the stash hands out or keeps
 * has FD_CLOEXEC set. A stash is not thread-safe; its owner serialises calls.
 *
 * Every function that can fail returns a negative errno and fills err (which
 * may be NULL); no error path leaks a descriptor. */
#ifndef NVTPM_FDSTASH_H
#define NVTPM_FDSTASH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "util.h"

/* Longest name, in bytes (systemd's LISTEN_FDNAMES allows 255). */
#define FDSTASH_NAME_MAX 255

/* Descriptors one received message may carry beyond what the caller asked for
 * and still be counted (and closed); more than that truncates the message. */
#define FDSTASH_RECV_SURPLUS 16

struct fdstash_entry;

struct fdstash {
    struct fdstash_entry *head;
    size_t count;
};

void fdstash_init(struct fdstash *stash);

/* Close every stashed descriptor and forget every name. */
void fdstash_cleanup(struct fdstash *stash);

/* Check a name a user may give: non-empty, at most FDSTASH_NAME_MAX bytes of
 * printable ASCII, not starting with a digit (those are for numeric descriptors). */
int fdstash_check_name(const char *name, struct nv_error *err);

/* Take ownership of fd under name. A descriptor already stashed under that name
 * is closed and replaced. Ownership passes even on failure: fd is then closed. */
int fdstash_give(struct fdstash *stash, const char *name, int fd, struct nv_error *err);

/* Hand ownership of the named descriptor back: returns it, or -ENOENT. */
int fdstash_take(struct fdstash *stash, const char *name);

/* The named descriptor, still owned by the stash, or -ENOENT. */
int fdstash_peek(const struct fdstash *stash, const char *name);

size_t fdstash_count(const struct fdstash *stash);

/* ---- receiving descriptors ---------------------------------------------- */

/* Receive one message from the UNIX stream socket sock: up to len (>= 1) data
 * bytes into buf and up to max_fds descriptors into fds, with FD_CLOEXEC set.
 * Returns the number of data bytes (0: the peer closed) and sets *nfds. A
 * message with more descriptors than max_fds, or whose control data was
 * truncated (MSG_CTRUNC), is an error (-E2BIG, -EMSGSIZE) and every
 * descriptor it brought is closed. EINTR is retried. */
ssize_t fdstash_recvmsg(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *nfds,
                        struct nv_error *err);

/* ---- inherited descriptors ---------------------------------------------- */

/* Kinds of descriptor, as a bit mask of what is acceptable. */
enum fdstash_kind {
    FDSTASH_LISTENING_SOCKET = 1u << 0, /* a SOCK_STREAM socket in listen() */
    FDSTASH_CONNECTED_SOCKET = 1u << 1, /* a connected stream, datagram or seqpacket socket
                                         * (one end of a socketpair, say) */
    FDSTASH_FILE = 1u << 2,             /* a regular file or a block device */
    FDSTASH_CHAR_DEVICE = 1u << 3,      /* a character device (a pty, say) */
};

/* Parse "N" or "fd=N" (decimal, no sign) into *fd. */
int fdstash_parse_fd(const char *text, int *fd, struct nv_error *err);

/* Check that fd is open and of one of the kinds in the mask. */
int fdstash_check_fd(int fd, unsigned kinds, struct nv_error *err);

/* Adopt a descriptor inherited from the parent process, named by text ("N" or
 * "fd=N"): check it, set FD_CLOEXEC, and stash it under the name "N". Returns N.
 * On failure the descriptor is left as it was (the stash did not own it). */
int fdstash_inherit(struct fdstash *stash, const char *text, unsigned kinds, struct nv_error *err);

/* Socket activation: when LISTEN_PID is this process, stash descriptors
 * 3 .. 3+LISTEN_FDS-1 under the names in LISTEN_FDNAMES (or "listen-I" for
 * the I-th without a name), set FD_CLOEXEC on them and unset the three
 * variables. Returns how many were imported; 0 when the variables are absent or
 * meant for another process. A duplicate or invalid name is an error, and then
 * nothing is imported. */
int fdstash_import_listen_fds(struct fdstash *stash, struct nv_error *err);

/* ---- helpers for the block layer ---------------------------------------- */

/* Duplicate fd with FD_CLOEXEC, at 3 or above. Returns the new descriptor. */
int fdstash_dup(int fd, struct nv_error *err);

#endif
