/* server.h - the swtpm-compatible socket server: the data and control
 * channels (swtpm's protocol, see ctrl.h) over TCP, UNIX or inherited
 * sockets, around the TPM backend (tpm.h). */
#ifndef NVTPM_SERVER_H
#define NVTPM_SERVER_H

#include <stdbool.h>

#include "tpm.h"

enum tpm_channel_type {
    TPM_CHANNEL_NONE,
    TPM_CHANNEL_TCP,
    TPM_CHANNEL_UNIX,
    TPM_CHANNEL_FD,       /* an inherited listening or connected socket */
    TPM_CHANNEL_CLIENTFD, /* an inherited connected socket (control only) */
};

struct tpm_channel_config {
    enum tpm_channel_type type;
    const char *bindaddr; /* TCP; default 127.0.0.1 */
    unsigned port;
    const char *path; /* UNIX */
    unsigned mode;    /* UNIX socket file mode; default 0600 */
    long uid, gid;    /* UNIX socket owner; -1 = unchanged */
    int fd;           /* FD, CLIENTFD; for data also a character device (a pty) */
    bool disconnect;  /* data: close after each response */
    bool terminate;   /* control: exit when the connection closes */
};

struct tpm_server_config {
    struct tpm_channel_config data, ctrl;
    unsigned platform_port; /* MS simulator platform port (mssim TCTI); 0 = none */
    bool terminate;         /* exit when the data connection closes */
    bool reject_locality_4;
    bool file_key;                       /* for GET_CONFIG */
    const struct mig_key *migration_key; /* blobs out are encrypted, in may be */
    const struct mig_key *state_key;     /* the --key, for blobs swtpm encrypted with it */
    bool release_lock_outgoing;          /* give up ownership once the savestate blob is read */
    bool migration;                      /* --migration given (GET_CAPABILITY's LOCK_STORAGE bit) */
    struct nvram_storage *storage;       /* for the ownership hand-off */
    unsigned log_level;                  /* >= 5: each command and response logged */
    int log_fd;
    const char *log_prefix; /* before each line on log_fd (--log prefix=), or NULL */
    /* Called once the sockets exist, before serving (daemonize, pid file). */
    int (*ready)(void *opaque, struct nv_error *err);
    void *ready_opaque;
};

/* Serve the data channel's commands arriving on the connected socket fd, on
 * the calling thread, until it closes or a command ends the connection (for
 * the fuzz target and tests; the server does this on its TPM thread). */
void tpm_server_serve_data(int fd);

/* Serve until SHUTDOWN, a signal (SIGTERM, SIGINT: orderly), or a terminate
 * condition; the TPM is stopped orderly before returning. */
int tpm_server_run(const struct tpm_server_config *cfg, struct nv_error *err);

#endif
