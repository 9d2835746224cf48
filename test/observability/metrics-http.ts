// Shared by the metrics server tests: servers closed after each test, and a plain HTTP client.
import { request } from 'node:http'
import { afterEach } from 'vitest'
import type { MetricsServer } from '../../src/observability/index.js'

/**
 * Registers an afterEach that closes every server pushed onto the returned list. Call it once,
 * at the top level of a test file.
 */
export function serversClosedAfterEach(): MetricsServer[] {
  const servers: MetricsServer[] = []
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()))
  })
  return servers
}

/** Sends one request with no body and reads the whole answer as text. */
export function send(
  url: string,
  method = 'GET',
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** GETs `url`: only its status and body, so an answer can be compared whole with toEqual. */
export async function get(url: string): Promise<{ status: number; body: string }> {
  const { status, body } = await send(url)
  return { status, body }
}
