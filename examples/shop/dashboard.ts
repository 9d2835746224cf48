// The dashboard: a plain web page (no framework, no build step) served by the demo process,
// live through Server-Sent Events, with the chaos controls posting back here.
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { fileURLToPath } from 'node:url'
import { getSagaTimeline } from 'breakwater/saga'
import { type ChaosAction, chaosActionOf, describeAction } from './chaos.js'
import type { Monitor } from './monitor.js'
import type { Shop } from './system.js'

/** Options of {@link startDashboard}. */
export interface DashboardOptions {
  readonly shop: Shop
  readonly monitor: Monitor
  /** Applies a chaos action from a button. */
  readonly chaos: (action: ChaosAction) => Promise<void>
  /** Port to listen on; a busy port falls back to a free one. 0: any free port. */
  readonly port: number
}

/** The running dashboard. */
export interface Dashboard {
  readonly url: string
  /** The port asked for when it was busy and the dashboard took a free one instead. */
  readonly busyPort?: number | undefined
  close(): Promise<void>
}

// The page lives next to the sources (examples/shop/dashboard/index.html); the compiled demo
// runs from dist/examples/shop/, three levels below the repository root.
function pageHtml(): string {
  for (const relative of [
    './dashboard/index.html',
    '../../../examples/shop/dashboard/index.html',
  ]) {
    try {
      return readFileSync(fileURLToPath(new URL(relative, import.meta.url)), 'utf8')
    } catch {}
  }
  return '<!doctype html><p>dashboard page not found</p>'
}

function listen(server: Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      if (error.code === 'EADDRINUSE' && port !== 0) {
        server.listen(0, '127.0.0.1')
      } else reject(error)
    }
    server.on('error', onError)
    server.listen(port, '127.0.0.1', () => {
      server.off('error', onError)
      const address = server.address()
      resolve(typeof address === 'object' && address !== null ? address.port : port)
    })
  })
}

/** Serves the dashboard. */
export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const page = pageHtml()
  const processNames = [...options.shop.processes.keys()]
  const streams = new Set<import('node:http').ServerResponse>()
  const server = createServer((req, res) => {
    const url = req.url ?? '/'
    const json = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
    }
    if (url === '/' || url === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page)
    } else if (url === '/api/state') {
      json(200, options.monitor.snapshot())
    } else if (url === '/api/events') {
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-store',
        connection: 'keep-alive',
      })
      res.write(`data: ${JSON.stringify(options.monitor.snapshot())}\n\n`)
      streams.add(res)
      req.on('close', () => streams.delete(res))
    } else if (url === '/api/proxy-config') {
      res
        .writeHead(200, { 'content-type': 'text/plain; charset=utf-8' })
        .end(options.shop.proxy?.configYaml ?? '# the proxy is not running (--no-proxy)\n')
    } else if (url.startsWith('/api/saga/')) {
      // A malformed escape makes decodeURIComponent throw: a throw here would end the demo.
      let id: string
      try {
        id = decodeURIComponent(url.slice('/api/saga/'.length))
      } catch {
        return json(400, { error: 'the saga id is not a valid URL component' })
      }
      getSagaTimeline(options.shop.dbs.orders, id).then(
        (timeline) => json(200, timeline),
        (error: unknown) => json(500, { error: String(error) }),
      )
    } else if (url === '/api/chaos' && req.method === 'POST') {
      let body = ''
      req.on('data', (chunk: Buffer) => {
        body += chunk.toString()
      })
      req.on('end', () => {
        // A body that is not an action is answered 400 (a throw here would end the demo).
        let action: ChaosAction | string
        try {
          action = chaosActionOf(JSON.parse(body), processNames)
        } catch {
          action = 'the body is not JSON'
        }
        if (typeof action === 'string') return json(400, { error: action })
        options.chaos(action).then(
          () => json(200, { applied: describeAction(action) }),
          (error: unknown) => json(500, { error: String(error) }),
        )
      })
    } else {
      json(404, { error: 'not found' })
    }
  })
  const port = await listen(server, options.port)
  // Said in the demo's dashboard line: a user who asked for a port (or expects the default's
  // URL from an earlier run) would otherwise open the other program still holding it.
  const busyPort = options.port !== 0 && port !== options.port ? options.port : undefined
  const timer = setInterval(() => {
    let text: string
    try {
      text = `data: ${JSON.stringify(options.monitor.snapshot())}\n\n`
    } catch {
      return
    }
    for (const res of streams) res.write(text)
  }, 1_000)
  return {
    url: `http://127.0.0.1:${port}/`,
    busyPort,
    close: async () => {
      clearInterval(timer)
      for (const res of streams) res.end()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
