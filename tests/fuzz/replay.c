/* SPDX-License-Identifier: MIT */
/*
 * A main() for the fuzz harnesses in builds without libFuzzer (gcc): run
 * every file of a seed corpus, then random mutations of them for a few
 * seconds, so the harnesses are compiled and exercised by every test run.
 *
 *   fuzz_replay_X CORPUS_DIR [SECONDS] [MAX_LEN]
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seed {
	uint8_t *data;
	size_t len;
};

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t next(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int load(const char *dir, struct seed **out, size_t *n)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (!d) {
		perror(dir);
		return -1;
	}
	while ((de = readdir(d))) {
		char path[4096];
		FILE *f;
		struct seed s = { 0 };

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		f = fopen(path, "rb");
		if (!f)
			continue;
		fseek(f, 0, SEEK_END);
		s.len = (size_t)ftell(f);
		fseek(f, 0, SEEK_SET);
		s.data = malloc(s.len ? s.len : 1);
		if (!s.data || fread(s.data, 1, s.len, f) != s.len) {
			fclose(f);
			return -1;
		}
		fclose(f);
		*out = realloc(*out, (*n + 1) * sizeof(**out));
		(*out)[(*n)++] = s;
	}
	closedir(d);
	return 0;
}

int main(int argc, char **argv)
{
	struct seed *seeds = NULL;
	size_t n_seeds = 0, max_len = argc > 3 ? strtoul(argv[3], NULL, 0) : 4096;
	double secs = argc > 2 ? atof(argv[2]) : 3.0, end;
	unsigned long runs = 0;
	uint8_t *buf;

	if (argc < 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR [SECONDS] [MAX_LEN]\n", argv[0]);
		return 2;
	}
	if (getenv("FUZZ_SEED"))
		rng = strtoull(getenv("FUZZ_SEED"), NULL, 0);
	if (load(argv[1], &seeds, &n_seeds) || !n_seeds) {
		fprintf(stderr, "%s: no seed corpus\n", argv[1]);
		return 1;
	}
	for (size_t i = 0; i < n_seeds; i++, runs++)
		LLVMFuzzerTestOneInput(seeds[i].data, seeds[i].len);
	for (size_t i = 0; i < n_seeds; i++)
		if (seeds[i].len > max_len)
			max_len = seeds[i].len;
	buf = malloc(max_len);
	if (!buf)
		return 1;
	end = now_s() + secs;
	while (now_s() < end) {
		for (int k = 0; k < 64; k++, runs++) {
			const struct seed *s = &seeds[next() % n_seeds];
			size_t len = s->len;
			unsigned muts = 1 + (unsigned)(next() % 8);

			memcpy(buf, s->data, len);
			if (next() % 8 == 0) {
				len = (size_t)(next() % (max_len + 1));
				if (len > s->len)
					memset(buf + s->len, 0, len - s->len);
			}
			for (unsigned m = 0; m < muts && len; m++) {
				size_t at = (size_t)(next() % len);
				uint64_t v = next();

				switch (next() % 4) {
				case 0: buf[at] ^= (uint8_t)(1u << (v % 8)); break;
				case 1: buf[at] = (uint8_t)v; break;
				case 2: {   /* an interesting 32-bit value */
					static const uint32_t ints[] = { 0, 1, 4, 7, 8, 9, 63, 64, 0x7fffffff,
						0x80000000u, 0xfffffffcu, 0xffffffffu, 65536, 65532 };
					uint32_t x = ints[v % (sizeof(ints) / sizeof(ints[0]))];

					if (at + 4 <= len)
						memcpy(buf + at, &x, 4);
					break;
				}
				default: {  /* copy a run from elsewhere */
					size_t from = (size_t)(next() % len), n = 1 + (size_t)(v % 16);

					if (from + n <= len && at + n <= len)
						memmove(buf + at, buf + from, n);
				}
				}
			}
			LLVMFuzzerTestOneInput(buf, len);
		}
	}
	printf("%s: %lu inputs (%zu seeds) in %.1f s, no crash\n", argv[0], runs, n_seeds, secs);
	free(buf);
	for (size_t i = 0; i < n_seeds; i++)
		free(seeds[i].data);
	free(seeds);
	return 0;
}
