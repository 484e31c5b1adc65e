// fewshot_landmarks.c: the runtime-ffi C API end to end on the committed tiny fixtures.
//
//   fewshot_landmarks LANDMARK_MODEL BACKBONE_MODEL FIXTURES_DIR
//
// 1. Loads the landmark model, runs it on FIXTURES_DIR/face.rgb (raw RGB8 at the model's input
//    size) and prints the 5 landmarks in input pixels.
// 2. Loads the backbone, runs it on every image of FIXTURES_DIR/episode.txt
//    (objects/<name>.rgb) and prints the features.
// 3. Fits the two few-shot heads on the episode's support features and prints each query's
//    predicted class and the accuracy.
//
// Lines starting with "landmarks" or "features" carry every value with 9 significant digits
// (enough to give back the exact float); run_c_example.sh compares them with
// `runtime-cli infer --json --exact-size` on the same pixels.
//
// Memory, as firmware would do it: handles and buffers are the program's own (static here, sized
// for the tiny fixtures and checked against rt_model_get_info); only rt_model_load and the head
// fits allocate. The model bytes are read into memory with malloc because this is a host program;
// on a device they would be a const array in flash.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_ffi.h"

#define MAX_ARENA (64 * 1024)
#define MAX_IMAGE (64 * 64 * 3)
#define MAX_DIM 512
#define MAX_IMAGES 64
#define MAX_WAY 16

static const char *const LANDMARK_NAMES[RT_LANDMARKS] = {
    "lefteye", "righteye", "nose", "leftmouth", "rightmouth"};

// Zero-initialised: rt_ calls on a handle that was never loaded report RT_STATUS_NOT_LOADED.
static rt_model landmark_model;
static rt_model backbone;
static rt_head linear_head;
static rt_head centroid_head;
static uint8_t arena[MAX_ARENA];
static uint8_t image[MAX_IMAGE];
static float support[MAX_IMAGES * MAX_DIM];
static float queries[MAX_IMAGES * MAX_DIM];

// Prints the message of a failed call and exits (a real firmware would recover instead).
static void check(rt_status s, const char *what) {
    if (s != RT_STATUS_OK) {
        fprintf(stderr, "error: %s: %s (code %d)\n", what, rt_error_message(s), (int)s);
        exit(1);
    }
}

static void fail(const char *what, const char *path) {
    fprintf(stderr, "error: %s: %s\n", path, what);
    exit(1);
}

// Reads a whole file into a fresh malloc'd buffer.
static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail("cannot open", path);
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 1 << 16;
            buf = realloc(buf, cap);
            if (!buf) fail("out of memory", path);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    *len = n;
    return buf;
}

// Reads a raw RGB8 image that must be exactly the model's input size.
static void read_image(const char *path, const rt_model_info *info) {
    FILE *f = fopen(path, "rb");
    if (!f) fail("cannot open", path);
    size_t n = fread(image, 1, sizeof image, f);
    fclose(f);
    if (n != info->input_len) fail("not a raw RGB8 image of the model's input size", path);
}

// Loads a model; the returned bytes must outlive the handle.
static uint8_t *load(rt_model *m, const char *path, rt_model_info *info) {
    size_t len;
    uint8_t *bytes = read_file(path, &len);
    check(rt_model_load(m, bytes, len), path);
    check(rt_model_get_info(m, info), "rt_model_get_info");
    printf("model %s: task %s, dtype %s, input %zux%zux%zu, output %zu, arena %zu bytes, "
           "weights %zu bytes, %llu MACs\n",
           path, info->task == RT_TASK_LANDMARKS ? "landmarks" : "features",
           info->dtype == RT_DTYPE_INT8 ? "int8" : "f32", info->input_h, info->input_w,
           info->input_c, info->output_len, info->arena_bytes, info->weight_bytes,
           (unsigned long long)info->macs);
    if (info->arena_bytes > sizeof arena || info->input_len > sizeof image ||
        info->output_len > MAX_DIM)
        fail("model too large for this example's static buffers", path);
    return bytes;
}

static void print_values(const char *tag, const char *name, const float *v, size_t n) {
    printf("%s %s", tag, name);
    for (size_t i = 0; i < n; i++) printf(" %.9g", v[i]);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s LANDMARK_MODEL BACKBONE_MODEL FIXTURES_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[3];
    char path[1024];
    rt_model_info info;

    // 1. Landmarks.
    uint8_t *lm_bytes = load(&landmark_model, argv[1], &info);
    if (info.task != RT_TASK_LANDMARKS) fail("not a landmark model", argv[1]);
    snprintf(path, sizeof path, "%s/face.rgb", dir);
    read_image(path, &info);
    float out[MAX_DIM];
    check(rt_run_u8(&landmark_model, image, info.input_len, arena, sizeof arena, out,
                    info.output_len),
          "rt_run_u8 (landmarks)");
    rt_point points[RT_LANDMARKS];
    check(rt_landmarks(&landmark_model, out, info.output_len, points, RT_LANDMARKS),
          "rt_landmarks");
    printf("landmarks face.rgb");
    for (size_t i = 0; i < RT_LANDMARKS; i++)
        printf(" %s %.9g %.9g", LANDMARK_NAMES[i], points[i].x, points[i].y);
    printf("\n");
    check(rt_model_release(&landmark_model), "rt_model_release");
    free(lm_bytes);

    // 2. Features of the episode's images.
    uint8_t *bb_bytes = load(&backbone, argv[2], &info);
    if (info.task != RT_TASK_FEATURES) fail("not a features model", argv[2]);
    const size_t dim = info.output_len;
    snprintf(path, sizeof path, "%s/episode.txt", dir);
    FILE *ep = fopen(path, "r");
    if (!ep) fail("cannot open", path);
    uint8_t support_labels[MAX_IMAGES], query_labels[MAX_IMAGES];
    char query_names[MAX_IMAGES][64];
    size_t n_support = 0, n_query = 0, n_way = 0;
    char line[256];
    while (fgets(line, sizeof line, ep)) {
        char role[16], name[64];
        unsigned label;
        if (line[0] == '#' || sscanf(line, "%15s %u %63s", role, &label, name) != 3) continue;
        int is_support = strcmp(role, "support") == 0;
        if ((is_support ? n_support : n_query) == MAX_IMAGES || label >= MAX_WAY)
            fail("episode too large for this example", path);
        snprintf(path, sizeof path, "%s/objects/%s.rgb", dir, name);
        read_image(path, &info);
        float *f = is_support ? &support[n_support * dim] : &queries[n_query * dim];
        check(rt_run_u8(&backbone, image, info.input_len, arena, sizeof arena, f, dim),
              "rt_run_u8 (features)");
        print_values("features", name, f, dim);
        if (is_support) {
            support_labels[n_support++] = (uint8_t)label;
        } else {
            strcpy(query_names[n_query], name);
            query_labels[n_query++] = (uint8_t)label;
        }
        if (label + 1 > n_way) n_way = label + 1;
    }
    fclose(ep);

    // 3. Few-shot: fit both heads on the support set, classify the queries.
    rt_sgd_recipe recipe = rt_sgd_recipe_default();
    check(rt_head_fit_linear(&linear_head, support, n_support * dim, support_labels, n_support,
                             n_way, dim, &recipe, 1),
          "rt_head_fit_linear");
    check(rt_head_fit_centroid(&centroid_head, support, n_support * dim, support_labels,
                               n_support, n_way, dim),
          "rt_head_fit_centroid");
    size_t right_linear = 0, right_centroid = 0;
    for (size_t q = 0; q < n_query; q++) {
        size_t lin, cen;
        check(rt_head_predict(&linear_head, &queries[q * dim], dim, &lin), "rt_head_predict");
        check(rt_head_predict(&centroid_head, &queries[q * dim], dim, &cen), "rt_head_predict");
        float scores[MAX_WAY];
        check(rt_head_scores(&linear_head, &queries[q * dim], dim, scores, n_way),
              "rt_head_scores");
        printf("query %s label %u linear %zu centroid %zu logits", query_names[q],
               (unsigned)query_labels[q], lin, cen);
        for (size_t c = 0; c < n_way; c++) printf(" %.4f", scores[c]);
        printf("\n");
        right_linear += lin == query_labels[q];
        right_centroid += cen == query_labels[q];
    }
    printf("fewshot %zu-way %zu support %zu queries: linear %zu/%zu, centroid %zu/%zu correct\n",
           n_way, n_support, n_query, right_linear, n_query, right_centroid, n_query);

    // Misuse is reported, not undefined: a NULL output buffer.
    rt_status s = rt_run_u8(&backbone, image, info.input_len, arena, sizeof arena, NULL, dim);
    printf("NULL output -> %d: %s\n", (int)s, rt_error_message(s));

    check(rt_head_release(&linear_head), "rt_head_release");
    check(rt_head_release(&centroid_head), "rt_head_release");
    check(rt_model_release(&backbone), "rt_model_release");
    free(bb_bytes);
    return 0;
}
