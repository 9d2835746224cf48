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
  /**
   * PostgreSQL only: the next connection whose client sends `COMMIT` is cut as soon as the
   * server answers it, and the answer is dropped. The commit happened, but the client sees a
   * lost connection: the ambiguous outcome of a connection killed after COMMIT was sent.
   * Resolves once that connection has been cut.
   */
  cutAfterCommit(): Promise<void>
  /**
   * The next connection whose client sends bytes holding `marker` (a statement's text: it goes
   * out the first time a connection prepares the statement) is cut: with `'before-sending'`
   * those bytes are dropped (the server never runs the statement, yet the client cannot tell
   * that from a lost answer); with `'after-answer'` they go through and the server's answer is
   * dropped. Resolves once that connection has been cut.
   */
  cutAt(marker: string, when: 'before-sending' | 'after-answer'): Promise<void>
  /**
   * The next client bytes holding `marker` go through, but what the server sends back on that
   * connection from then on is held (a slow answer, not a lost one) until `release()`, which
   * passes it on in order. `sent` resolves once the marked bytes went to the server.
   */
  holdAnswerTo(marker: string): { readonly sent: Promise<void>; release(): void }
  /** Severs everything and stops listening. */
  close(): Promise<void>
}

/** Starts a fault proxy forwarding to `host:port`; it passes bytes through until told otherwise. */
export async function startTcpFaultProxy(host: string, port: number): Promise<TcpFaultProxy> {
  const sockets = new Set<Socket>()
  let dropping = false
  // Armed by cutAt: the bytes to look for, and what to do.
  let armed:
    | { readonly marker: string; readonly before: boolean; readonly resolve: () => void }
    | undefined
  // Armed by holdAnswerTo: the bytes to look for, and where the held answer goes.
  let holdArmed:
    | { readonly marker: string; readonly hold: (release: () => void) => void }
    | undefined
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
    // Set once this connection's COMMIT went out: the server's answer to it ends the connection.
    let cutOnAnswer: (() => void) | undefined
    // Set once this connection's marked bytes went out under holdAnswerTo.
    let held: Buffer[] | undefined
    client.on('data', (chunk: Buffer) => {
      if (holdArmed !== undefined && chunk.includes(holdArmed.marker)) {
        const { hold } = holdArmed
        holdArmed = undefined
        held = []
        // Passes the held answer on in order; this connection's answers then flow as before.
        hold(() => {
          const chunks = held ?? []
          held = undefined
          if (!client.destroyed) for (const answer of chunks) client.write(answer)
        })
      }
      const cut = armed !== undefined && chunk.includes(armed.marker) ? armed : undefined
      if (cut === undefined) {
        upstream.write(chunk)
        return
      }
      armed = undefined
      const sever = (): void => {
        client.destroy()
        upstream.destroy()
        cut.resolve()
      }
      if (cut.before) sever()
      else {
        upstream.write(chunk)
        cutOnAnswer = sever
      }
    })
    upstream.on('data', (chunk) => {
      if (cutOnAnswer !== undefined) {
        cutOnAnswer()
        return
      }
      if (held !== undefined) held.push(chunk)
      else if (!dropping) client.write(chunk)
    })
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  const listening = await listenOnLoopback(server)
  const cutAt = (marker: string, when: 'before-sending' | 'after-answer'): Promise<void> =>
    new Promise<void>((resolve) => {
      armed = { marker, before: when === 'before-sending', resolve }
    })
  const holdAnswerTo = (marker: string): { sent: Promise<void>; release(): void } => {
    let release = (): void => {
      holdArmed = undefined
    }
    const sent = new Promise<void>((resolve) => {
      holdArmed = {
        marker,
        hold: (flush) => {
          release = flush
          resolve()
        },
      }
    })
    return { sent, release: () => release() }
  }
  const severAll = (): void => {
    for (const socket of sockets) socket.destroy()
  }
  return {
    port: listening,
    dropServerBytes: (on) => {
      dropping = on
    },
    severAll,
    cutAt,
    holdAnswerTo,
    // A simple-protocol COMMIT (how pg sends client.query('COMMIT')): its text and NUL.
    cutAfterCommit: () => cutAt('COMMIT\0', 'after-answer'),
    close: async () => {
      severAll()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/**
 * A fault proxy in front of the server of a database URL (`postgres://...`), and the same URL
 * pointed at the proxy: what a test opens its driver with.
 */
export async function proxiedUrl(url: string): Promise<{ proxy: TcpFaultProxy; url: string }> {
  const target = new URL(url)
  const proxy = await startTcpFaultProxy(target.hostname, Number(target.port))
  target.hostname = '127.0.0.1'
  target.port = String(proxy.port)
  return { proxy, url: target.toString() }
}
