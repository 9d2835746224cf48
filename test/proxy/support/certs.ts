// Test certificates made with the openssl CLI in a temporary folder: a CA, a server
// certificate for 127.0.0.1 / localhost / ::1, and a client certificate, all signed by the CA.
// issueCert() makes more (a second server certificate for hot-reload tests, another CA's
// client certificate for mTLS refusals).

import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A certificate and its key, as files and as PEM text. */
export interface CertFiles {
  readonly certFile: string
  readonly keyFile: string
  readonly cert: string
  readonly key: string
}

/** A CA plus a server and a client certificate it signed. */
export interface TestCerts {
  /** The temporary folder holding every file. */
  readonly dir: string
  readonly ca: CertFiles
  readonly server: CertFiles
  readonly client: CertFiles
  /** Deletes the folder. */
  cleanup(): void
}

function openssl(args: readonly string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe' })
}

function files(dir: string, name: string): CertFiles {
  const certFile = join(dir, `${name}.pem`)
  const keyFile = join(dir, `${name}-key.pem`)
  return {
    certFile,
    keyFile,
    cert: readFileSync(certFile, 'utf8'),
    key: readFileSync(keyFile, 'utf8'),
  }
}

/** Makes a self-signed CA named `name` in `dir`. */
export function createCa(dir: string, name = 'ca', commonName = 'breakwater test CA'): CertFiles {
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      `${name}-key.pem`,
      '-out',
      `${name}.pem`,
      '-days',
      '2',
      '-subj',
      `/CN=${commonName}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  )
  return files(dir, name)
}

/**
 * Makes a certificate `name` signed by `ca`: `kind: 'server'` gets the subject alternative
 * names (default 127.0.0.1, ::1, localhost) and serverAuth, `'client'` gets clientAuth.
 */
export function issueCert(
  dir: string,
  ca: CertFiles,
  name: string,
  kind: 'server' | 'client',
  options: { readonly commonName?: string; readonly altNames?: readonly string[] } = {},
): CertFiles {
  const cn = options.commonName ?? (kind === 'server' ? 'localhost' : 'breakwater-client')
  openssl(
    [
      'req',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      `${name}-key.pem`,
      '-out',
      `${name}.csr`,
      '-subj',
      `/CN=${cn}`,
    ],
    dir,
  )
  const alt = options.altNames ?? ['IP:127.0.0.1', 'IP:::1', 'DNS:localhost']
  const ext =
    kind === 'server'
      ? `subjectAltName=${alt.join(',')}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`
      : 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n'
  writeFileSync(join(dir, `${name}.ext`), ext)
  openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      ca.certFile,
      '-CAkey',
      ca.keyFile,
      '-CAcreateserial',
      '-out',
      `${name}.pem`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    ],
    dir,
  )
  return files(dir, name)
}

/** A fresh temporary folder with a CA, a server certificate and a client certificate. */
export function createTestCerts(): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-certs-'))
  const ca = createCa(dir)
  const server = issueCert(dir, ca, 'server', 'server')
  const client = issueCert(dir, ca, 'client', 'client')
  return { dir, ca, server, client, cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}
