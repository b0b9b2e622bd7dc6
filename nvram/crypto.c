/* crypto.c - the few primitives the NVRAM needs, from OpenSSL 3: AES-GCM,
 * PBKDF2-HMAC-SHA512, SHA-256, random bytes. */
/* SHA-256 through OpenSSL's low-level interface, deprecated in 3.0 but kept
 * (libtpms uses it too): an EVP digest would make OpenSSL fetch and cache
 * every digest its default provider offers, 24 KiB of heap in every TPM
 * process (measured, docs/benchmarks.md), for the checksums of an image
 * that needs nothing else of EVP unless it is encrypted. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "internal.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <string.h>

int nvram_random(void *buf, size_t len)
{
    return RAND_bytes(buf, (int)len) == 1 ? 0 : -EIO;
}

void nvram_sha256(const void *a, size_t a_len, const void *b, size_t b_len, uint8_t out[32])
{
    SHA256_CTX ctx;
    if (SHA256_Init(&ctx) != 1 || SHA256_Update(&ctx, a, a_len) != 1 ||
        (b_len && SHA256_Update(&ctx, b, b_len) != 1) || SHA256_Final(out, &ctx) != 1)
        memset(out, 0, 32); /* cannot match a real digest's check by chance */
    OPENSSL_cleanse(&ctx, sizeof(ctx));
}

int nvram_sha512(const void *in, size_t len, uint8_t out[64])
{
    unsigned n = 64;
    return EVP_Digest(in, len, out, &n, EVP_sha512(), NULL) == 1 ? 0 : -EIO;
}

static const EVP_CIPHER *gcm_for(size_t key_len)
{
    return key_len == 16 ? EVP_aes_128_gcm() : key_len == 32 ? EVP_aes_256_gcm() : NULL;
}

int nvram_gcm_seal(const uint8_t *key, size_t key_len, const uint8_t nonce[12], const uint8_t *aad,
                   size_t aad_len, const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16])
{
    const EVP_CIPHER *cipher = gcm_for(key_len);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, ok = cipher && ctx && EVP_EncryptInit_ex(ctx, cipher, NULL, key, nonce) == 1 &&
                    EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1 &&
                    (len == 0 || EVP_EncryptUpdate(ctx, out, &n, in, (int)len) == 1) &&
                    EVP_EncryptFinal_ex(ctx, out + len, &n) == 1 &&
                    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -EIO;
}

int nvram_gcm_open(const uint8_t *key, size_t key_len, const uint8_t nonce[12], const uint8_t *aad,
                   size_t aad_len, const uint8_t *in, size_t len, uint8_t *out,
                   const uint8_t tag[16])
{
    const EVP_CIPHER *cipher = gcm_for(key_len);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    uint8_t tag_copy[16];
    memcpy(tag_copy, tag, 16);
    int n = 0, ok = cipher && ctx && EVP_DecryptInit_ex(ctx, cipher, NULL, key, nonce) == 1 &&
                    EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1 &&
                    (len == 0 || EVP_DecryptUpdate(ctx, out, &n, in, (int)len) == 1) &&
                    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag_copy) == 1 &&
                    EVP_DecryptFinal_ex(ctx, out + len, &n) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok && len)
        nv_wipe(out, len); /* no unauthenticated plaintext escapes */
    return ok ? 0 : -EBADMSG;
}

int nvram_pbkdf2(const uint8_t *pass, size_t pass_len, const uint8_t *salt, size_t salt_len,
                 uint32_t iterations, uint8_t *out, size_t out_len)
{
    return PKCS5_PBKDF2_HMAC((const char *)pass, (int)pass_len, salt, (int)salt_len,
                             (int)iterations, EVP_sha512(), (int)out_len, out) == 1
               ? 0
               : -EIO;
}
