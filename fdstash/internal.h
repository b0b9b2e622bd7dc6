/* internal.h - what the files of fdstash/ share and nobody else sees. */
#ifndef NVTPM_FDSTASH_INTERNAL_H
#define NVTPM_FDSTASH_INTERNAL_H

#include "fdstash.h"

/* Stash fd under name without the rule that names must not start with a
 * digit. On failure fd is left open: the caller still owns it. */
int fdstash_store(struct fdstash *stash, const char *name, int fd, struct nv_error *err);

#endif
