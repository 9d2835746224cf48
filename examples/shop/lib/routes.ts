// A few lines of routing, enough for the shop's small APIs (no framework on purpose: the
// patterns are the point, and breakwater's adapters work with plain node:http).
import type { IncomingMessage, ServerResponse } from 'node:http'
import { sendJson } from './host.js'

/** A route handler; `params` holds the `:name` segments of its pattern. */
export type RouteHandler = (
  req: IncomingMessage,
  res: ServerResponse,
  params: Readonly<Record<string, string>>,
) => Promise<void> | void

/** Builds a handler from `'METHOD /path/:param'` patterns; unmatched requests get 404. */
export function router(routes: Readonly<Record<string, RouteHandler>>) {
  const table = Object.entries(routes).map(([pattern, handler]) => {
    const [method, path] = pattern.split(' ') as [string, string]
    const names: string[] = []
    const regex = new RegExp(
      `^${path.replace(/:([a-zA-Z]+)/g, (_, name: string) => {
        names.push(name)
        return '([^/]+)'
      })}$`,
    )
    return { method, regex, names, handler }
  })
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?')[0]!
    for (const route of table) {
      if (route.method !== req.method) continue
      const match = route.regex.exec(path)
      if (match === null) continue
      const params: Record<string, string> = {}
      route.names.forEach((name, i) => {
        params[name] = decodeURIComponent(match[i + 1]!)
      })
      return route.handler(req, res, params)
    }
    sendJson(res, 404, { error: `no route for ${req.method} ${path}` })
  }
}

/** The query string of a request as a URLSearchParams. */
export function queryOf(req: IncomingMessage): URLSearchParams {
  const url = req.url ?? '/'
  const at = url.indexOf('?')
  return new URLSearchParams(at < 0 ? '' : url.slice(at + 1))
}
