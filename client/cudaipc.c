/* SPDX-License-Identifier: MIT */
#include "cudaipc.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>

/* The few driver entry points used, declared here so that no CUDA header
 * is needed to build liblorad. Types as the driver API defines them. */
typedef int cu_result;                      /* CUresult: 0 is CUDA_SUCCESS */
typedef struct { char reserved[64]; } cu_ipc_handle; /* CUipcMemHandle, CUipcEventHandle */

static struct {
	cu_result (*init)(unsigned);
	cu_result (*device_by_bus)(int *, const char *);
	cu_result (*ctx_retain)(void **, int);
	cu_result (*ctx_release)(int);
	cu_result (*ctx_push)(void *);
	cu_result (*ctx_pop)(void **);
	cu_result (*mem_open)(uint64_t *, cu_ipc_handle, unsigned);
	cu_result (*mem_close)(uint64_t);
	cu_result (*event_open)(void **, cu_ipc_handle);
	cu_result (*event_destroy)(void *);
	cu_result (*stream_wait)(void *, void *, unsigned);
	cu_result (*event_sync)(void *);
	cu_result (*event_query)(void *);
	int status;                             /* 0 or -ENOTSUP */
} cu;

static pthread_once_t cu_once = PTHREAD_ONCE_INIT;

#define CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS 1u

static void cu_load(void)
{
	/* the driver's soname; never unloaded once it answered */
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	struct { const char *name; void **fn; } sym[] = {
		{ "cuInit", (void **)&cu.init },
		{ "cuDeviceGetByPCIBusId", (void **)&cu.device_by_bus },
		{ "cuDevicePrimaryCtxRetain", (void **)&cu.ctx_retain },
		{ "cuDevicePrimaryCtxRelease_v2", (void **)&cu.ctx_release },
		{ "cuCtxPushCurrent_v2", (void **)&cu.ctx_push },
		{ "cuCtxPopCurrent_v2", (void **)&cu.ctx_pop },
		{ "cuIpcOpenMemHandle_v2", (void **)&cu.mem_open },
		{ "cuIpcCloseMemHandle", (void **)&cu.mem_close },
		{ "cuIpcOpenEventHandle", (void **)&cu.event_open },
		{ "cuEventDestroy_v2", (void **)&cu.event_destroy },
		{ "cuStreamWaitEvent", (void **)&cu.stream_wait },
		{ "cuEventSynchronize", (void **)&cu.event_sync },
		{ "cuEventQuery", (void **)&cu.event_query },
	};

	cu.status = -ENOTSUP;
	if (!h)
		return;
	for (size_t i = 0; i < sizeof(sym) / sizeof(sym[0]); i++) {
		*sym[i].fn = dlsym(h, sym[i].name);
		if (!*sym[i].fn) {
			dlclose(h);
			return;
		}
	}
	if (cu.init(0) != 0) {
		dlclose(h);
		return;
	}
	cu.status = 0;
}

int cipc_available(void)
{
	pthread_once(&cu_once, cu_load);
	return cu.status;
}

/* The primary context current on this thread for the length of one call. */
static int enter(const struct cipc *x)
{
	return cu.ctx_push(x->ctx) ? -EIO : 0;
}

static void leave(void)
{
	void *old;

	cu.ctx_pop(&old);
}

int cipc_open(struct cipc *x, const char *bus_id, const unsigned char mem[64],
	      const unsigned char ev[64])
{
	cu_ipc_handle hm, he;
	int ret;

	memset(x, 0, sizeof(*x));
	if ((ret = cipc_available()) < 0)
		return ret;
	if (!bus_id[0] || cu.device_by_bus(&x->dev, bus_id))
		return -ENODEV;
	if (cu.ctx_retain(&x->ctx, x->dev))
		return -ENODEV;
	x->ordinal = x->dev;
	memcpy(&hm, mem, sizeof(hm));
	memcpy(&he, ev, sizeof(he));
	if (enter(x) < 0) {
		cu.ctx_release(x->dev);
		return -EIO;
	}
	ret = 0;
	if (cu.mem_open(&x->base, hm, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)) {
		ret = -EXDEV;
	} else if (cu.event_open(&x->ev, he)) {
		cu.mem_close(x->base);
		ret = -EXDEV;
	}
	leave();
	if (ret) {
		cu.ctx_release(x->dev);
		memset(x, 0, sizeof(*x));
	}
	return ret;
}

void cipc_close(struct cipc *x)
{
	if (!x->ctx)
		return;
	if (enter(x) == 0) {
		cu.event_destroy(x->ev);
		cu.mem_close(x->base);
		leave();
	}
	cu.ctx_release(x->dev);
	memset(x, 0, sizeof(*x));
}

int cipc_stream_wait(struct cipc *x, void *stream)
{
	int ret;

	if (enter(x) < 0)
		return -EIO;
	/* An event that has passed needs no wait, and a stream made to wait
	 * for an interprocess event costs it about 150 us on an H200 even
	 * then (bench_results): ask first, about a microsecond. */
	ret = cu.event_query(x->ev);
	if (ret == 0) {
		leave();
		return 0;
	}
	ret = cu.stream_wait(stream, x->ev, 0) ? -EIO : 0;
	leave();
	return ret;
}

int cipc_sync(struct cipc *x)
{
	int ret;

	if (enter(x) < 0)
		return -EIO;
	ret = cu.event_sync(x->ev) ? -EIO : 0;
	leave();
	return ret;
}
