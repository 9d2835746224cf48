// A TCP server that takes connections and never says a word: a database port behind a broken
// load balancer, or a host whose process hangs, as a start that waits on it meets it.

import type { Socket } from 'node:net'
import { createServer } from 'node:net'
import { listenOnLoopback } from '../../support/loopback.js'

/** A running {@link startSilentServer}. */
export interface SilentServer {
  readonly port: number
  /** Connections taken so far. */
  accepted(): number
  /** Destroys the connections and stops listening. */
  close(): Promise<void>
}

/** Starts a {@link SilentServer} on a free loopback port. */
export async function startSilentServer(): Promise<SilentServer> {
  const sockets: Socket[] = []
  const server = createServer((socket) => void sockets.push(socket))
  const port = await listenOnLoopback(server)
  return {
    port,
    accepted: () => sockets.length,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}
