// Opens medflow's pages in headless Chromium as a user would and checks they work:
//  1. GraphiQL (GET /graphql): a query run from the page shows a patient created through REST;
//     a subscription run from the page shows the event of a later change;
//  2. Swagger UI (GET /docs/): "Authorize", then "Try it out" → "Execute" on
//     GET /api/v1/patients/{id} shows a 200 with the patient.
// Any page error or Content-Security-Policy violation fails the run.
// Environment: MEDFLOW_URL (e.g. http://127.0.0.1:8080), MEDFLOW_TOKEN (a registrar's bearer
// token), MEDFLOW_PATIENT (the id of a patient to show and change), CHROMIUM (default
// /usr/bin/chromium). Exit code 0 = every check passed.
import { chromium } from 'playwright-core';

const base = process.env.MEDFLOW_URL;
const token = process.env.MEDFLOW_TOKEN;
if (!base || !token) {
  console.error('MEDFLOW_URL and MEDFLOW_TOKEN are required');
  process.exit(2);
}
const TIMEOUT = 30_000;

async function api(method, path, body, headers = {}) {
  const response = await fetch(new URL(path, base), {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return { json: text ? JSON.parse(text) : null, etag: response.headers.get('etag') };
}

// A fresh browser context per page: its own storage, and every error it shows collected.
async function open(browser, path, storage = {}) {
  const context = await browser.newContext();
  await context.addInitScript((entries) => {
    for (const [key, value] of Object.entries(entries)) localStorage.setItem(key, value);
  }, storage);
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // A failed request is reported below with its URL.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  const frames = [];
  page.on('websocket', (socket) => {
    frames.push(`open ${socket.url()}`);
    socket.on('framesent', (frame) => frames.push(`> ${String(frame.payload).slice(0, 200)}`));
    socket.on('framereceived', (frame) => frames.push(`< ${String(frame.payload).slice(0, 200)}`));
    socket.on('close', () => frames.push('closed'));
  });
  page.on('response', (response) => {
    if (response.status() >= 400) {
      const request = response.request();
      problems.push(
        `${request.method()} ${response.url()} answered ${response.status()} (sent ${request.headers().authorization ?? "no Authorization"}: ${request.postData()?.slice(0, 80)})`,
      );
    }
  });
  await page.exposeFunction('__cspViolation', (text) => problems.push(text));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) =>
      window.__cspViolation(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`),
    );
  });
  await page.goto(new URL(path, base).href);
  return { context, page, problems, frames };
}

function check(what, problems) {
  if (problems.length) throw new Error(`${what}:\n  ${problems.join('\n  ')}`);
  console.log(`ok - ${what}`);
}

async function graphiqlQuery(browser, patient) {
  const query = `query One { patient(id: "${patient.id}") { id lastName version } }`;
  const { context, page, problems } = await open(browser, '/graphql', {
    'graphiql:query': query,
    'graphiql:headers': JSON.stringify({ Authorization: `Bearer ${token}` }),
    'graphiql:shouldPersistHeaders': 'true',
  });
  await page.locator('.graphiql-execute-button').click();
  await page.locator('.result-window').getByText(patient.lastName).waitFor();
  const shown = await page.locator('.result-window').innerText();
  if (!shown.includes(`"version": ${patient.version}`)) problems.push(`result lacks the version: ${shown}`);
  check('GraphiQL runs a query and shows the answer', problems);
  await context.close();
}

async function graphiqlSubscription(browser, patient) {
  const query = `subscription Changes { patientChanged(id: "${patient.id}") { eventType aggregateId version } }`;
  const { context, page, problems, frames } = await open(browser, '/graphql', {
    'graphiql:query': query,
    'graphiql:headers': JSON.stringify({ Authorization: `Bearer ${token}` }),
    'graphiql:shouldPersistHeaders': 'true',
  });
  await page.locator('.graphiql-execute-button').click();
  // The subscription is live once its WebSocket has acknowledged; keep changing the patient
  // until an event shows (the first change may race the subscribe).
  const result = page.locator('.result-window').getByText('PatientUpdated');
  const deadline = Date.now() + TIMEOUT;
  let n = 0;
  while (!(await result.isVisible())) {
    if (Date.now() > deadline) {
      const shown = await page.locator('.result-window').innerText();
      throw new Error(`no PatientUpdated event shown in GraphiQL; it shows: ${shown}\n${problems.join('\n')}\nWebSocket: ${frames.join('\n')}`);
    }
    n += 1;
    await api('PATCH', `/api/v1/patients/${patient.id}`, { email: `browser${n}@example.org` });
    await result.waitFor({ timeout: 2_000 }).catch(() => {});
  }
  check('GraphiQL runs a subscription and shows its events', problems);
  await context.close();
}

async function swaggerTryItOut(browser, patient) {
  const { context, page, problems } = await open(browser, '/docs/');
  await page.getByRole('button', { name: /Authorize/ }).first().click();
  const dialog = page.locator('.dialog-ux');
  await dialog.locator('input').first().fill(token);
  await dialog.locator('button.modal-btn.authorize').click();
  await dialog.locator('button.btn-done').click();
  const operation = page.locator('.opblock-get', {
    has: page.locator('[data-path="/api/v1/patients/{id}"]'),
  }).first();
  await operation.locator('.opblock-summary').click();
  await operation.getByRole('button', { name: 'Try it out' }).click();
  await operation.locator('input[placeholder="id"]').fill(patient.id);
  await operation.getByRole('button', { name: 'Execute' }).click();
  const status = operation.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor();
  const code = (await status.innerText()).trim();
  const body = await operation.locator('.live-responses-table .response .microlight').first().innerText();
  if (code !== '200') problems.push(`"Try it out" answered ${code}: ${body}`);
  if (!body.includes(patient.lastName)) problems.push(`the response shown lacks the patient: ${body}`);
  check('Swagger UI "Try it out" runs GET /api/v1/patients/{id}', problems);
  await context.close();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
try {
  const patient = (await api('GET', `/api/v1/patients/${process.env.MEDFLOW_PATIENT}`)).json;
  await graphiqlQuery(browser, patient);
  await graphiqlSubscription(browser, patient);
  await swaggerTryItOut(browser, patient);
} finally {
  await browser.close();
}
