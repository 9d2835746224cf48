// A user-space TCP proxy on loopback for network faults that this machine's kernel cannot make
// without a network namespace: bytes from the server silently dropped (a blackhole in one
// direction), and every connection cut at once.
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net'
import { listenOnLoopback } from './loopback.js'

/** A running fault proxy in front of one TCP server. */
export interface TcpFaultProxy {
  /** The loopback port clients connect to instead of the server's. */
  readonly port: number
  /**
   * While on, bytes from the server to its clients are read and dropped: the server believes
   * it sent them, the clients never see them.
   */
  dropServerBytes(on: boolean): void
  /** Destroys every open connection, on both sides, as a crashed peer or router would. */
  severAll(): void
  /** Severs everything and stops listening. */
  close(): Promise<void>
}

/** Starts a fault proxy forwarding to `host:port`; it passes bytes through until told otherwise. */
export async function startTcpFaultProxy(host: string, port: number): Promise<TcpFaultProxy> {
  const sockets = new Set<Socket>()
  let dropping = false
  const track = (socket: Socket): void => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    // A reset of one side is expected here; it must not crash the test process.
    socket.on('error', () => socket.destroy())
  }
  const server: Server = createServer((client) => {
    const upstream = tcpConnect({ host, port })
    track(client)
    track(upstream)
    client.on('data', (chunk) => upstream.write(chunk))
    upstream.on('data', (chunk) => {
      if (!dropping) client.write(chunk)
    })
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  const listening = await listenOnLoopback(server)
  const severAll = (): void => {
    for (const socket of sockets) socket.destroy()
  }
  return {
    port: listening,
    dropServerBytes: (on) => {
      dropping = on
    },
    severAll,
    close: async () => {
      severAll()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
