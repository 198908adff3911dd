/* SPDX-License-Identifier: MIT */
/*
 * CUDA IPC for liblorad, through the CUDA driver (libcuda.so.1) loaded at
 * first use: the library builds and runs without CUDA, and a process
 * without a driver gets -ENOTSUP. The handles are opened in the device's
 * primary context, the one the CUDA runtime of the application uses, so
 * the pointers and the event are the application's to use directly.
 */
#ifndef LORAD_CLIENT_CUDAIPC_H
#define LORAD_CLIENT_CUDAIPC_H

#include <stdint.h>

struct cipc {
	void *ctx;          /* CUcontext: the device's primary context, retained */
	int dev;            /* CUdevice */
	int ordinal;        /* the device's number in this process */
	uint64_t base;      /* CUdeviceptr of the opened allocation */
	void *ev;           /* CUevent */
};

/* 0 when the driver loads and initialises, else -ENOTSUP. Any thread. */
int cipc_available(void);

/*
 * Open the allocation @mem and the event @ev (cudaIpc*Handle_t, 64 bytes
 * each) of the device with PCI bus id @bus_id. Returns 0; -ENOTSUP (no
 * driver); -ENODEV (this process does not see that device); -EXDEV (the
 * handle does not open here: another PID namespace, another container);
 * -EIO otherwise. On error @x holds nothing.
 */
int cipc_open(struct cipc *x, const char *bus_id, const unsigned char mem[64],
	      const unsigned char ev[64]);
void cipc_close(struct cipc *x);

/* Make @stream (a cudaStream_t or CUstream; NULL: the default stream)
 * wait for the event. Returns 0 or -EIO. */
int cipc_stream_wait(struct cipc *x, void *stream);

/* Block until the event has passed. Returns 0 or -EIO. */
int cipc_sync(struct cipc *x);

#endif
