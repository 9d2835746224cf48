// Test servers on the loopback interface: listen on a free port, or find one nothing listens
// on. One place for what nearly every network test does first.
import { createServer, type Server } from 'node:net'

/** Starts `server` (an http, https, tls or net server) on 127.0.0.1 at a free port; resolves to the port. */
export async function listenOnLoopback(server: Server): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('the server has no port')
  return address.port
}

// Ports freeLoopbackPort already handed out in this process. Once closed, a port is free for
// the kernel to give to the next bind(0) again, so two calls in a row could return one port
// (seen: a proxy config with two listeners on the same port, refused at start).
const handedOut = new Set<number>()

/**
 * A loopback port nothing listens on (a server bound it, then closed), never one this process
 * was already given.
 */
export async function freeLoopbackPort(): Promise<number> {
  for (;;) {
    const server = createServer()
    const port = await listenOnLoopback(server)
    await new Promise<void>((resolve) => server.close(() => resolve()))
    if (handedOut.has(port)) continue
    handedOut.add(port)
    return port
  }
}

/** Runs `use` with a loopback port another server holds (a port in use), then frees it. */
export async function withTakenPort(use: (port: number) => Promise<void>): Promise<void> {
  const taken = createServer()
  const port = await listenOnLoopback(taken)
  try {
    await use(port)
  } finally {
    await new Promise((resolve) => taken.close(resolve))
  }
}
