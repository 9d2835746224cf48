// WebSocket peers for the tunnel tests: real upstream servers (the `ws` package, the most used
// Node implementation) and a real client (undici's WebSocket, another implementation, so the
// tests prove the proxy passes what two independent stacks say to each other).
import { randomBytes } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, request } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { Agent, WebSocket } from 'undici'
import { WebSocketServer } from 'ws'
import { listenOnLoopback } from '../../support/loopback.js'
import { until } from '../../support/until.js'

/** A WebSocket upstream that echoes text as `<name>:<text>` and binary as it came. */
export interface WsUpstream {
  readonly name: string
  readonly url: string
  /** Handshakes it accepted: path and headers as they arrived. */
  readonly seen: { url: string; headers: IncomingHttpHeaders }[]
  /** Close frames it received from clients. */
  readonly closes: { code: number; reason: string }[]
  /** Connections open now. */
  open(): number
  /** Sends `text` to every open connection. */
  broadcast(text: string): void
  close(): Promise<void>
}

/**
 * Starts a {@link WsUpstream}; `refuse` answers every handshake with that status instead;
 * `tls` serves wss with that certificate and requires client certificates signed by `ca`.
 */
export async function startWsUpstream(
  name: string,
  options: { refuse?: number; tls?: { cert: string; key: string; ca: string } } = {},
): Promise<WsUpstream> {
  const tls = options.tls
  const server =
    tls === undefined
      ? createServer()
      : createHttpsServer({ ...tls, requestCert: true, rejectUnauthorized: true })
  const seen: WsUpstream['seen'] = []
  const closes: WsUpstream['closes'] = []
  const wss = new WebSocketServer({
    server,
    handleProtocols: (protocols) => (protocols.has('v2.chat') ? 'v2.chat' : false),
    ...(options.refuse === undefined
      ? {}
      : {
          verifyClient: (
            _info: unknown,
            done: (ok: boolean, status: number, message: string) => void,
          ) => done(false, options.refuse as number, 'Refused by the upstream'),
        }),
  })
  wss.on('connection', (socket, req) => {
    seen.push({ url: req.url ?? '', headers: req.headers })
    socket.on('message', (data, isBinary) => {
      if (isBinary) socket.send(data, { binary: true })
      else socket.send(`${name}:${data.toString()}`)
    })
    socket.on('close', (code, reason) => closes.push({ code, reason: reason.toString() }))
  })
  const port = await listenOnLoopback(server)
  return {
    name,
    url: `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    seen,
    closes,
    open: () => wss.clients.size,
    broadcast: (text) => {
      for (const client of wss.clients) client.send(text)
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const client of wss.clients) client.terminate()
        wss.close()
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** A connected client: undici's WebSocket with its messages queued. */
export interface WsClient {
  readonly socket: WebSocket
  /** The next message not yet taken (text, or a Buffer for binary). */
  next(): Promise<string | Buffer>
  /** Resolves with the close event's code once the connection has closed. */
  readonly closed: Promise<number>
}

/** Opens a WebSocket to `url` (ws:// or wss://, `ca` to trust), resolving once it is open. */
export async function connectWs(
  url: string,
  protocols: string[] = [],
  ca?: string,
): Promise<WsClient> {
  const socket = new WebSocket(
    url,
    ca === undefined ? { protocols } : { protocols, dispatcher: new Agent({ connect: { ca } }) },
  )
  socket.binaryType = 'arraybuffer'
  const queue: (string | Buffer)[] = []
  const closed = new Promise<number>((resolve) => {
    socket.addEventListener('close', (event) => resolve(event.code))
  })
  socket.addEventListener('message', (event) => {
    const data = event.data as string | ArrayBuffer
    queue.push(typeof data === 'string' ? data : Buffer.from(data))
  })
  await new Promise<void>((resolve, reject) => {
    socket.addEventListener('open', () => resolve())
    socket.addEventListener('error', () => reject(new Error(`could not open ${url}`)))
  })
  return {
    socket,
    closed,
    next: async () => {
      await until(() => queue.length > 0, `a message on ${url}`)
      return queue.shift() as string | Buffer
    },
  }
}

/** What a handshake that was not switched got back. */
export interface HandshakeAnswer {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly body: string
}

/**
 * Sends a WebSocket handshake by hand (so tests can make it wrong) and resolves with the
 * answer when it is not 101; a 101 is a test failure here.
 */
export function rawHandshake(
  port: number,
  path: string,
  options: { method?: string; headers?: Record<string, string> } = {},
): Promise<HandshakeAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      path,
      method: options.method ?? 'GET',
      agent: false,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-key': randomBytes(16).toString('base64'),
        'sec-websocket-version': '13',
        ...options.headers,
      },
    })
    req.on('upgrade', (_res, socket) => {
      socket.destroy()
      reject(new Error(`${path} was switched to WebSocket`))
    })
    req.on('response', (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString('utf8'),
        }),
      )
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}
