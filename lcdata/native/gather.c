/* The packer's copy loop: one pass writes input_ids, labels and position_ids of a batch of
   packed rows. Each piece is a contiguous run of one sample's tokens (two memcpys and a
   counting loop), so the cost is memory bandwidth, not interpreter overhead. */
#include <stdint.h>
#include <string.h>

void lcdata_gather(int64_t n_pieces, const int32_t *const *ids_segs, const int32_t *const *lab_segs,
                   const int32_t *seg, const int64_t *src, const int64_t *len,
                   int32_t *ids_out, int32_t *lab_out, int32_t *pos_out) {
    int64_t o = 0;
    for (int64_t i = 0; i < n_pieces; i++) {
        const int64_t n = len[i];
        if (n <= 0) continue;
        memcpy(ids_out + o, ids_segs[seg[i]] + src[i], (size_t)n * sizeof(int32_t));
        memcpy(lab_out + o, lab_segs[seg[i]] + src[i], (size_t)n * sizeof(int32_t));
        lab_out[o] = -100; /* a sample's first token never carries a label */
        for (int64_t t = 0; t < n; t++) pos_out[o + t] = (int32_t)t;
        o += n;
    }
}
