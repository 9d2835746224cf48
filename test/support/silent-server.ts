// A TCP server that takes connections and never says a word: a database port behind a broken
// load balancer, a hung server, or a half-up failover, as a client connecting to it meets one.

import { createServer, type Socket } from 'node:net'
import { listenOnLoopback } from './loopback.js'

/** A running {@link startSilentServer}. */
export interface SilentServer {
  readonly port: number
  /** Connections taken so far. */
  accepted(): number
  /** Settles with the first connection it takes. */
  readonly firstConnection: Promise<Socket>
  /** Destroys the connections and stops listening. */
  close(): Promise<void>
}

/** Starts a {@link SilentServer} on a free loopback port. */
export async function startSilentServer(): Promise<SilentServer> {
  let first: (socket: Socket) => void = () => {}
  const firstConnection = new Promise<Socket>((resolve) => {
    first = resolve
  })
  const sockets: Socket[] = []
  const server = createServer((socket) => {
    sockets.push(socket)
    // A client that gives up resets the connection: nothing to report.
    socket.on('error', () => {})
    first(socket)
  })
  const port = await listenOnLoopback(server)
  return {
    port,
    accepted: () => sockets.length,
    firstConnection,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}
