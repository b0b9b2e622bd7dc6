/* socket-dir.c - `nvtpm socket --tpmstate dir=DIR`: a folder that swtpm and
 * nvtpm may both have served. nvtpm's state is the image DIR/tpm-00.qcow2;
 * swtpm's, its files DIR/tpm2-00.permall and so on. Which one is the TPM is
 * decided here by one rule, swtpm's own: the folder's swtpm files are the
 * TPM when there is no image or when they were written after the image (then
 * they are imported into a new image, and an image already there is kept
 * beside it, renamed); otherwise the image is. Nothing is ever lost. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "migration.h"

static bool later(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec > b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec > b->tv_nsec);
}

static const char *when(const struct timespec *t, char *out, size_t size)
{
    struct tm tm;
    time_t s = t->tv_sec;
    strftime(out, size, "%Y-%m-%d %H:%M:%S", localtime_r(&s, &tm));
    return out;
}

/* The names of the files present, "tpm2-00.permall, tpm2-00.volatilestate". */
static const char *file_names(int tpm_version, unsigned present, char *out, size_t size)
{
    char name[32];
    out[0] = '\0';
    for (int b = 0; b < NVRAM_BLOBS; b++)
        if (present & (1u << b))
            snprintf(out + strlen(out), size - strlen(out), "%s%s", out[0] ? ", " : "",
                     mig_dir_file_name(tpm_version, b, name, sizeof(name)));
    return out;
}

int cli_dir_inspect(const char *dir, const char *img, int tpm_version, enum cli_dir_state *state,
                    struct mig_dir_files *files)
{
    struct nv_error err = {0};
    if (mig_dir_files(dir, tpm_version, files, &err) < 0)
        return cli_fail(CLI_EXIT_ERROR, "%s", err.msg);
    struct stat st;
    bool have_image = stat(img, &st) == 0;
    if (!have_image && errno != ENOENT)
        return cli_fail(CLI_EXIT_ERROR, "%s: %s", img, strerror(errno));
    if (!files->present) {
        *state = have_image ? CLI_DIR_IMAGE : CLI_DIR_NEW;
        return 0;
    }
    if (!have_image) {
        *state = CLI_DIR_SWTPM;
        return 0;
    }
    /* Files older than the image are the import's record; newer ones mean
     * swtpm wrote them since (it ran on the folder, or its files were put
     * back): like swtpm, serve them. The image is kept beside (cli_dir_import). */
    *state = later(&files->newest, &st.st_mtim) ? CLI_DIR_SWTPM_NEWER : CLI_DIR_IMAGE;
    return 0;
}

/* The image moved aside before a newer state is imported: IMG.replaced-TIME,
 * never over another file. */
static int set_image_aside(const char *img, char *aside, size_t size)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", gmtime_r(&now, &tm));
    for (int i = 0; i < 100; i++) {
        snprintf(aside, size, "%s.replaced-%s%s%.0d", img, stamp, i ? "-" : "", i);
        if (link(img, aside) == 0 && unlink(img) == 0)
            return 0;
        if (errno != EEXIST)
            return cli_fail(CLI_EXIT_ERROR, "%s: cannot move it aside to %s: %s", img, aside,
                            strerror(errno));
    }
    return cli_fail(CLI_EXIT_ERROR, "%s: no free name to move it aside", img);
}

int cli_dir_import(const char *dir, const char *img, int tpm_version, const struct nvram_key *key,
                   unsigned mode, const struct mig_dir_files *replacing, int log_fd,
                   const char *log_prefix)
{
    char tmp[PATH_MAX], aside[PATH_MAX + 64], why[512] = "";
    int code;
    struct stat st;
    if (replacing && stat(img, &st) == 0) {
        char names[128], t1[32], t2[32];
        snprintf(why, sizeof(why), "%s (written %s) newer than the image (last written %s)",
                 file_names(tpm_version, replacing->present, names, sizeof(names)),
                 when(&replacing->newest, t2, sizeof(t2)), when(&st.st_mtim, t1, sizeof(t1)));
    }
    if (replacing && (code = set_image_aside(img, aside, sizeof(aside))) != 0)
        return code;
    snprintf(tmp, sizeof(tmp), "%s.importing", img);
    /* The folder's lock is held: an .importing file is an interrupted import's. */
    if (unlink(tmp) == 0)
        nv_log(log_fd, log_prefix, "nvtpm: removed %s, left by an interrupted import", tmp);
    struct cli_import req = {.cmd = "socket",
                             .dir = dir,
                             .img = img,
                             .tpm_version = tpm_version,
                             .key = key,
                             .key_encrypts_plain = true,
                             .size = NVRAM_DEFAULT_IMAGE_SIZE,
                             .cipher = NVRAM_CIPHER_AES256_GCM,
                             .mode = mode,
                             .quiet = true,
                             .dir_locked = true};
    code = cli_import_dir(&req);
    if (code && replacing && link(aside, img) == 0) /* the import failed: back as it was */
        unlink(aside);
    else if (code == 0 && replacing)
        nv_log(log_fd, log_prefix,
               "nvtpm: %s holds swtpm's %s: swtpm's state is served, imported anew; the image "
               "%s is kept as %s",
               dir, why, img, aside);
    if (code == 0)
        nv_log(log_fd, log_prefix,
               "nvtpm: imported swtpm's TPM %s state from %s into %s%s; swtpm's files "
               "are left as they were",
               tpm_version == 2 ? "2.0" : "1.2", dir, img, key ? ", encrypted" : "");
    return code;
}
