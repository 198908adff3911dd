/* SPDX-License-Identifier: MIT */
/*
 * The daemon's configuration: defaults, then the config file (INI, read
 * with inih), then the command line. A bad line is reported with its line
 * number; at start lorad refuses to run, on reload it keeps the old config.
 */
#ifndef LORAD_CONFIG_H
#define LORAD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "classify.h"

#define CONFIG_MAX_IDS      16
#define CONFIG_MAX_ADAPTERS 256
#define CONFIG_MAX_ROUTES   256
#define CONFIG_MAX_TARGETS  16
/* Bytes of a config file: 256 adapters, 256 routes and 64 rules fit many
 * times over; more is not a config, and SIGHUP reads it on the engine thread. */
#define CONFIG_MAX_BYTES    (1u << 20)
#define CONFIG_NAME_MAX     32   /* = LORAD_SKILL_MAX */

struct config_adapter {
	char name[CONFIG_NAME_MAX];     /* skill name */
	char version[CONFIG_NAME_MAX];  /* "" = derived from the files' hash */
	char *path;
	bool cli;                       /* from --adapter: kept by a reload, which reads the file's again */
};

struct config_route {
	char skill[CONFIG_NAME_MAX];
	unsigned n;
	char target[CONFIG_MAX_TARGETS][2 * CONFIG_NAME_MAX]; /* "name@version" */
	uint32_t weight[CONFIG_MAX_TARGETS];
};

struct config {
	/* [daemon] */
	char *socket_path;
	char *admin_socket_path;
	unsigned socket_mode;
	unsigned admin_socket_mode;
	char *state_dir;
	char *model_dir;
	char *merge_adapter;            /* PEFT directory merged into the weights at start */
	char *backend;                  /* "auto", "cpu", "cuda" */
	char *bf16_compute;             /* "exact", "dot" */
	char *chat_template;            /* "auto" (tokenizer_config.json's), or a family of chat.h */
	bool null_engine;
	bool prefix_cache;           /* reuse cached prompt prefixes (the engine's prefix cache) */
	uint32_t null_step_us;
	uint32_t spin_us;
	uint32_t drain_ms;
	int cpu;
	int log_level;
	/* [limits] */
	uint32_t max_clients;
	uint32_t max_unauthenticated;   /* connections that have not sent their hello */
	uint32_t hello_timeout_ms;
	uint32_t max_inflight;
	uint32_t max_tokens;
	uint64_t max_prompt_bytes;      /* a text prompt's bytes */
	uint32_t max_prompt_tokens;     /* a prompt's tokens; 0 = the model's context */
	uint64_t shm_limit;
	uint64_t results_limit;         /* one session's device results buffer (CUDA IPC) */
	uint32_t kv_tokens;             /* KV cache size in token positions */
	uint32_t max_seqs;              /* sequences running at once */
	uint32_t step_tokens;           /* token budget of one engine step */
	uint32_t threads;               /* compute threads; 0 = all cores */
	uint64_t admin_max_request;     /* bytes of one admin request line */
	uint32_t admin_timeout_ms;
	uint32_t admin_max_connections;
	uint32_t max_metric_series;     /* skill x version rows of the metrics */
	uint64_t max_adapter_bytes;     /* an adapter's files together */
	uint32_t max_skills;            /* skills with a route */
	uint32_t remove_wait_ms;        /* a removal waits this long for its running requests */
	uint64_t grammar_memory;        /* compiled grammars alive at once */
	/* [access] */
	uid_t allow_uid[CONFIG_MAX_IDS];
	unsigned n_allow_uid;
	gid_t allow_gid[CONFIG_MAX_IDS];
	unsigned n_allow_gid;
	gid_t admin_gid;
	bool have_admin_gid;
	/* [pool] */
	uint64_t device_budget;
	uint64_t host_budget;
	uint64_t read_chunk;            /* bytes per loader read; 0: the loader's default */
	uint32_t read_depth;            /* loader reads in flight; 0: the loader's default */
	/* [adapter NAME] */
	struct config_adapter adapter[CONFIG_MAX_ADAPTERS];
	unsigned n_adapters;
	/* [route SKILL] */
	struct config_route route[CONFIG_MAX_ROUTES];
	unsigned n_routes;
	/* [classify]: rules for the skill "auto" */
	struct classify_rule_src classify[CLASSIFY_MAX_RULES];
	unsigned n_classify;
	char classify_default[CONFIG_NAME_MAX];
	bool have_classify;
};

/* Fill @c with the built-in defaults. */
void config_defaults(struct config *c);

/*
 * Read @path into @c (which holds defaults or an older config). @path must
 * name a regular file (symlinks to one are fine) of at most
 * CONFIG_MAX_BYTES, or /dev/null. Returns 0, or -EINVAL with @err saying "FILE:LINE: what
 * is wrong", or -errno with @err naming the file when it cannot be read or
 * is not a regular file (-EINVAL), too large (-EFBIG) or changed while it
 * was read (-EBADMSG).
 */
int config_load(struct config *c, const char *path, char *err, size_t errlen);

/* Check the whole config for consistency (after the command line). */
int config_check(const struct config *c, char *err, size_t errlen);

/* With no [access] and no --allow-*: lorad's own user and root. */
void config_default_access(struct config *c);

/* Make the adapters' paths absolute, against the working directory: the
 * registry stores them, and a reload must not depend on where lorad runs.
 * Returns 0 or -errno with @err naming the path. */
int config_absolute_paths(struct config *c, char *err, size_t errlen);

/* Forget the lists the config file holds ([adapter] sections, [route],
 * [classify]; --adapter's stay): a reload reads them again from the file
 * instead of appending to them, so a section taken out of the file is
 * not seeded again. */
void config_forget_file_lists(struct config *c);

/* Free the strings of @c. */
void config_free(struct config *c);

/* Deep copy, for keeping the old config across a reload. Returns 0 or -ENOMEM. */
int config_copy(struct config *dst, const struct config *src);


#endif
