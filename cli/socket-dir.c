/* socket-dir.c - `nvtpm socket --tpmstate dir=DIR`: a folder that swtpm and
 * nvtpm may both have served. nvtpm's state is the image DIR/tpm-00.qcow2;
 * swtpm's, its files DIR/tpm2-00.permall and so on. Which one is the TPM is
 * decided here: swtpm's files alone are imported into a new image; the image
 * alone, or with swtpm files older than it (the import's record), is served;
 * swtpm files written after the image are a second TPM state nvtpm does not
 * choose between: an error naming both, and nothing is touched. */
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

/* To the millisecond, with the zone: the two times compared may lie within
 * one second of each other. */
static const char *when(const struct timespec *t, char *out, size_t size)
{
    struct tm tm;
    time_t s = t->tv_sec;
    char day[32], zone[8];
    localtime_r(&s, &tm);
    strftime(day, sizeof(day), "%Y-%m-%d %H:%M:%S", &tm);
    strftime(zone, sizeof(zone), "%z", &tm);
    snprintf(out, size, "%.19s.%03ld %.5s", day, t->tv_nsec / 1000000, zone);
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
    if (!later(&files->newest, &st.st_mtim)) { /* the import's record */
        *state = CLI_DIR_IMAGE;
        return 0;
    }
    /* swtpm wrote its files after nvtpm last wrote the image (swtpm ran on the
     * folder since, or its files were put back): two states, and which one the
     * operator means is not nvtpm's guess. */
    char names[128], t_img[48], t_files[48];
    return cli_fail(CLI_EXIT_USAGE,
                    "%s holds two TPM states: the image %s (last written %s) and swtpm's %s "
                    "(written %s, after the image); move away the one not wanted (docs/libvirt.md)",
                    dir, img, when(&st.st_mtim, t_img, sizeof(t_img)),
                    file_names(tpm_version, files->present, names, sizeof(names)),
                    when(&files->newest, t_files, sizeof(t_files)));
}

int cli_dir_import(const char *dir, const char *img, int tpm_version, const struct nvram_key *key,
                   unsigned mode, int log_fd, const char *log_prefix)
{
    char tmp[PATH_MAX];
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
    int code = cli_import_dir(&req);
    if (code == 0)
        nv_log(log_fd, log_prefix,
               "nvtpm: imported swtpm's TPM %s state from %s into %s%s; swtpm's files "
               "are left as they were",
               tpm_version == 2 ? "2.0" : "1.2", dir, img, key ? ", encrypted" : "");
    return code;
}
