/* server-internal.h - what the server's files share, private to server/. */
#ifndef NVTPM_SERVER_INTERNAL_H
#define NVTPM_SERVER_INTERNAL_H

#include <stdbool.h>

#include "server.h"

/* Open a channel's socket: a listening one (*connected false) or, for
 * inherited descriptors, possibly a connected one (*connected true); the data
 * channel (is_data) may also be a character device (swtpm's --fd: a pty). */
int server_open_channel(const struct tpm_channel_config *c, const char *what, bool is_data,
                        bool *connected, struct nv_error *err);

/* Write exactly len bytes on a socket; -1 on error. */
int server_write_full(int fd, const void *buf, size_t len);

#endif
