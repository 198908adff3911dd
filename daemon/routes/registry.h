/* SPDX-License-Identifier: MIT */
/*
 * Adapter versions and the routes over them: the operator's state.
 *
 * A version is name@version, immutable once registered: the content hash of
 * its files (chash.h: the scheme and chunk size are recorded with it) is
 * taken then and verified on every load from disk as the bytes stream in,
 * and re-registering changed files under the same version is refused. The
 * version string is the operator's or the first 12 hex digits of the
 * version's identity hash.
 * Each version has a small number (vid) that completions carry; it is
 * stored with the state and never reused, so it means the same version
 * after a restart.
 *
 * The state directory holds the truth (state.json, see statedir.h); routes
 * in the config file only seed skills that have no state yet: no route,
 * and no route the operator deleted (registry_skill_has_state). A state file
 * that is not one lorad wrote is refused field by field, naming the file
 * and the key, and the daemon does not start: the operator decides.
 *
 * Changes are made durable before they are made: a change is prepared
 * (checked against the running state), the state it leads to is written
 * (registry_change_text, then statedir_write, on any thread), and only then
 * committed; a change whose write failed is dropped and nothing happened.
 *
 * The registry maps names, versions and routes to entries of the adapter
 * pool (daemon/store/pool.h) and nothing more: reading, verifying,
 * converting and making a version resident, and the tiers, are the pool's.
 */
#ifndef LORAD_REGISTRY_H
#define LORAD_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chash.h"
#include "pool.h"
#include "route.h"

struct engine;
struct registry;
struct statedir;
struct model_config;

/*
 * A registered version: its names and vid here, everything about its files
 * and its way to the engine in its pool entry (pool.h: the directory, the
 * digests, the state, the engine adapter id, pinned, load counts).
 */
struct reg_version {
	char name[32];
	char version[32];
	char id[ROUTE_NAME_MAX];     /* "name@version" */
	uint32_t vid;                /* small number reported in completions; stable */
	bool removing;               /* its removal waits for its requests or is being
				      * saved: it takes no new request and no new load */
	struct pool_entry *pe;       /* owned by the version until it is in the registry, then by the pool */
};

/*
 * The pool the registry's versions live in (pool.h): the tiers and their
 * budgets, the loader and the builder, pool_poll() and pool_fd() for the
 * engine loop. Made with the registry, freed with it.
 */
struct pool *registry_pool(const struct registry *r);

/* Skills with a route, at most (a route for one more is refused; 0 is
 * taken as 1, the option's minimum), and as many deleted routes: when it
 * is lowered the oldest past it are forgotten at once (the forget hook is
 * told), and so are they when registry_load_state reads more. Then the
 * bytes of an adapter's files that registry_add() reads at most. */
void registry_set_max_skills(struct registry *r, uint32_t n);
void registry_set_max_adapter_bytes(struct registry *r, uint64_t bytes);

/* The largest state.json the registry reads and so writes: 64 MiB (0),
 * smaller in tests. A change whose state would be larger is refused. */
void registry_set_max_state_bytes(struct registry *r, size_t bytes);

/*
 * Told of each deleted route the registry forgets (@why says why, for the
 * log line): past max_skills deletions, the oldest are forgotten first;
 * a route whose skill no new route may have is forgotten at its delete.
 * Its skill has no state from then on, so the config seeds it again at
 * the next reload or start if a section names it; the registry has no
 * logger, the daemon logs this. Called on the thread that changes the
 * registry, from inside that change: @fn must not change the registry.
 * @fn NULL: nobody is told.
 */
typedef void (*registry_forget_fn)(void *ctx, const char *skill, const char *why);
void registry_set_forget_hook(struct registry *r, registry_forget_fn fn, void *ctx);

/*
 * @sd NULL: nothing persists (tests, runs by hand); otherwise the registry
 * borrows it. @e may be NULL until the engine is up (no loading then); it
 * is the pool's engine (pool_set_engine).
 */
struct registry *registry_new(struct statedir *sd, struct engine *e);
void registry_free(struct registry *r);
void registry_set_engine(struct registry *r, struct engine *e);
struct statedir *registry_statedir(const struct registry *r);

/*
 * Read state.json. Returns 0 (also when there is none), or -EINVAL with
 * @err naming the file and the key that is wrong; the registry is then
 * left empty. Deleted routes past max_skills are forgotten, the oldest
 * first (registry_set_max_skills).
 */
int registry_load_state(struct registry *r, char *err, size_t errlen);

/* Write the running state to state.json (at start, and in tests). Returns 0 or -errno. */
int registry_save(struct registry *r, char *err, size_t errlen);

/*
 * How files registered as @name@@version (@version NULL or "": derived from
 * the hash) are to be hashed: as the version registered under that id is
 * recorded, so that the two can be compared (an old CHASH_SHA256 version
 * stays one); otherwise CHASH_NEW with CHASH_CHUNK.
 */
void registry_hash_scheme(const struct registry *r, const char *name, const char *version,
			  enum chash_scheme *scheme, uint32_t *chunk);

/*
 * Read @path's two files once (regular files only; symlinks to them are
 * followed), within @max_bytes together, hash them under @scheme (@chunk:
 * the tree's chunk size) and, when @mc is given,
 * build the adapter against that model and check every value: wrong
 * shapes, missing tensors and NaN/Inf are refused here, at registration,
 * not at the first request. @cancel (may be NULL) stops the work between
 * reads (-ECANCELED); @prog (may be NULL) counts the bytes read and hashed
 * (pool_read_files). Slow for large adapters: never on the engine thread.
 * Returns 0 or -errno with @err naming the file and what is wrong.
 */
int registry_inspect(const char *path, const struct model_config *mc, uint64_t max_bytes,
		     const volatile int *cancel, struct pool_progress *prog, enum chash_scheme scheme,
		     uint32_t chunk, struct pool_hashes *h, char *err, size_t errlen);

/*
 * Register @path (absolute) as @name@@version (@version NULL or "": derived
 * from the hash) at once, without the prepare/write/commit steps: at start
 * and in tests. Returns 0 and the entry in *out; -EEXIST when that version
 * exists with other files; -ENOENT/-EINVAL naming the file.
 */
int registry_add(struct registry *r, const char *name, const char *version, const char *path,
		 const struct reg_version **out, char *err, size_t errlen);

/* --- changes: prepare, make durable, commit ---------------------------------------- */

struct reg_change;

/* Each returns 0 with *out (NULL when there is nothing to change: the same
 * version registered again) or -errno with @err saying why, naming the
 * version or skill. Nothing changes until registry_commit(). */
int registry_prepare_add(struct registry *r, const char *name, const char *version,
			 const char *path, const struct pool_hashes *h,
			 struct reg_change **out, char *err, size_t errlen);
/*
 * A removal is refused while a route uses the version, while it is being
 * loaded (-EBUSY) and while another removal of it waits (-EALREADY). When
 * requests still run on it, -EINPROGRESS comes back with *out set: from
 * now on the version takes no new request (registry_resolve says -EIDRM)
 * and no route may name it, and the caller waits for the running ones to
 * end (registry_remove_ready) before it writes the state, or gives up with
 * registry_change_free(), which leaves the version as it was.
 */
int registry_prepare_remove(struct registry *r, const char *id, struct reg_change **out,
			    char *err, size_t errlen);
/* A removal that came back -EINPROGRESS: 0 once no running request uses
 * the version (it has left the engine then), -EBUSY while some still do.
 * Cheap: the engine counts the sequences that hold an adapter. */
int registry_remove_ready(struct registry *r, const struct reg_change *ch);
int registry_prepare_pin(struct registry *r, const char *id, bool pin, struct reg_change **out,
			 char *err, size_t errlen);
/* A new route for @skill: every target must be registered, and a skill
 * without a route must be a name a request can ask for: 1-31 of A-Z a-z
 * 0-9 _ . -, not base or auto (-EINVAL). */
int registry_prepare_route(struct registry *r, const char *skill, const char *const *targets,
			   const uint32_t *weights, unsigned n, struct reg_change **out, char *err,
			   size_t errlen);
/* The previous route of @skill back: every version it names must still be
 * registered. For a skill whose route was deleted, that route comes back
 * with its history, as it was (its bucket table too), within max_skills
 * and as a new route would be made: -EINVAL when the skill is no name a
 * new route may have (registry_prepare_route). */
int registry_prepare_rollback(struct registry *r, const char *skill, struct reg_change **out,
			      char *err, size_t errlen);
/*
 * Delete @skill's route: from the commit on a request for it is refused as
 * for a skill that never had one (-ENOENT), and its place no longer counts
 * against max_skills. The route and its history are kept as the skill's
 * deleted entry: a rollback brings them back, a new route for the skill
 * continues that history, a restart keeps the deletion, and the config does
 * not seed the skill again. At most max_skills deleted entries are kept;
 * the change forgets the oldest ones past that (their skills have no state
 * then, and the config may seed them again: registry_set_forget_hook
 * tells of each). A route an older lorad saved under a skill no new route
 * may have (registry_prepare_route) could not come back: it is not kept,
 * and the hook is told. -ENOENT naming the skill when it has no route.
 */
int registry_prepare_delete(struct registry *r, const char *skill, struct reg_change **out,
			    char *err, size_t errlen);

/*
 * state.json as it will be after @ch (NULL: as it is): a malloc'd text
 * (*len bytes). Returns 0, -ENOMEM, or -EFBIG when the text is larger
 * than a state file lorad reads back (registry_set_max_state_bytes), with
 * @err giving both sizes: such a change is refused, nothing changed.
 */
int registry_change_text(const struct registry *r, const struct reg_change *ch, char **text,
			 size_t *len, char *err, size_t errlen);

/*
 * Apply @ch (its state is durable now) and free it. *id, when not NULL,
 * receives the version or skill it changed (valid until the next change).
 * Returns 0, or -ENOMEM with nothing applied.
 */
int registry_commit(struct registry *r, struct reg_change *ch, const char **id);

/* Drop a change that was not committed. NULL is a no-op. */
void registry_change_free(struct reg_change *ch);

/* --- lookups ------------------------------------------------------------------------ */

const struct reg_version *registry_find(const struct registry *r, const char *id);
const struct reg_version *registry_at(const struct registry *r, unsigned i);
const struct reg_version *registry_by_vid(const struct registry *r, uint32_t vid);

/* True when @skill has a route (a skill the operator created). */
bool registry_skill_known(const struct registry *r, const char *skill);

/* True when @skill has a route or had one the operator deleted: either way
 * the state says what it is, and the config does not seed it. */
bool registry_skill_has_state(const struct registry *r, const char *skill);

/* @skill's entry: its route and history, or, when its route was deleted,
 * the deleted entry (e->deleted set, e->cur the route it had); e->cur NULL
 * when neither. The routes stay the registry's (valid until it changes). */
void registry_route_entry(const struct registry *r, const char *skill, struct route_entry *e);

/* Make @id resident now (prefetch), or start loading a pinned version. Returns 0 or -errno. */
int registry_prefetch(struct registry *r, const char *id, char *err, size_t errlen);

/*
 * Resolve a request: @skill through its route for @key to a version (its
 * id copied to @version_id, ROUTE_NAME_MAX bytes), or, when @skill is
 * "name@version" and no route has that name, to that version itself. When the version is
 * resident: 0 with *adapter and *vid. When it is not and a loader is set:
 * the load starts (or is under way) and -EINPROGRESS comes back with
 * *ticket naming the attempt; the caller asks again later with the same
 * ticket and gets 0, or that attempt's error (the file named in the log) —
 * a fresh request (ticket 0) after a failure tries again. Without a loader
 * the load happens here, synchronously (pool_acquire). -ENOENT: no such skill;
 * -EIDRM: the version is being removed (it waits for its running requests).
 * A request asking again whose skill's route was deleted meanwhile was
 * admitted before: it keeps the version it was given (@version_id as the
 * first answer wrote it), as a running request does.
 */
/* Whether a config's [route] for @skill, whose state already has its route
 * (or its deletion), differs from it, with a line in @msg saying so: the
 * state is the truth, and an operator's edit of the file must not be
 * ignored silently. */
bool registry_config_route_differs(const struct registry *r, const char *skill,
				   const char *const *targets, const uint32_t *weights, unsigned n,
				   char *msg, size_t len);

/* One sentence for a client on registry_resolve's error @ret for @skill
 * (@version_id as it left it), into @why (@len bytes). */
void registry_resolve_why(const struct registry *r, const char *skill, const char *version_id,
			  int ret, char *why, size_t len);
int registry_resolve(struct registry *r, const char *skill, uint64_t key, int *adapter,
		     uint32_t *vid, char *version_id, uint64_t *ticket);

struct route_table *registry_routes(struct registry *r);

#endif
