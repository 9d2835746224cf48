// A TCP server that accepts every connection and never sends a byte: a hung server, or a
// half-up failover, as a client connecting to it sees one.
import { createServer, type Socket } from 'node:net'

/** A running {@link silentServer}. */
export interface SilentServer {
  readonly port: number
  /** Settles with the first connection it accepts. */
  readonly accepted: Promise<Socket>
  /** Destroys the connections and stops listening. */
  close(): Promise<void>
}

/** Starts a {@link SilentServer} on a free loopback port. */
export async function silentServer(): Promise<SilentServer> {
  let accept: (socket: Socket) => void = () => {}
  const accepted = new Promise<Socket>((resolve) => {
    accept = resolve
  })
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    accept(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return {
    port: address.port,
    accepted,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  }
}
