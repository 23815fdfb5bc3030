// medflow's GraphiQL page: queries and mutations over `POST /graphql`, subscriptions over
// `/graphql/ws` (graphql-transport-ws). The page's HTML (served by medflow) names the two
// endpoints in data attributes, so this bundle has no inline script and the page's CSP can
// allow exactly its own assets. The headers editor's JSON is sent with every request and, for
// a subscription, as the `connection_init` payload (medflow reads `Authorization` there).
// The schema (for docs, completion and validation) comes from the SDL medflow serves without a
// token while introspection is on, so the page works before a token is pasted; with
// introspection off there is none (`schema: null`: GraphiQL neither introspects nor validates).
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { GraphiQL } from 'graphiql';
import { buildSchema } from 'graphql';
import { createClient } from 'graphql-ws';
import { createElement } from 'react';
import { createRoot } from 'react-dom/client';
import 'graphiql/style.css';
import './page.css';

const root = document.getElementById('graphiql');
const endpoint = new URL(root.dataset.endpoint, window.location.href);
const socket = new URL(root.dataset.subscriptions, window.location.href);
socket.protocol = socket.protocol === 'https:' ? 'wss:' : 'ws:';

const http = createGraphiQLFetcher({ url: endpoint.href });

function isSubscription(params, options) {
  const definitions = options?.documentAST?.definitions ?? [];
  return definitions.some(
    (definition) =>
      definition.kind === 'OperationDefinition' &&
      definition.operation === 'subscription' &&
      (!params.operationName || definition.name?.value === params.operationName),
  );
}

// One WebSocket per running subscription, closed when GraphiQL stops it.
async function* subscribe(params, headers) {
  const client = createClient({ url: socket.href, connectionParams: headers, retryAttempts: 0 });
  try {
    for await (const result of client.iterate(params)) {
      yield result;
    }
  } finally {
    await client.dispose();
  }
}

function fetcher(params, options) {
  if (isSubscription(params, options)) {
    return subscribe(params, options?.headers ?? {});
  }
  return http(params, options);
}

const defaultQuery = `# medflow GraphQL. Put a bearer token in the Headers tab, then run:
query Patients {
  patients(first: 5) {
    edges { node { id lastName firstName version } }
  }
}
`;

async function loadSchema() {
  try {
    const response = await fetch(new URL(root.dataset.schema, window.location.href));
    return response.ok ? buildSchema(await response.text()) : null;
  } catch {
    return null;
  }
}

createRoot(root).render(
  createElement(GraphiQL, {
    fetcher,
    schema: await loadSchema(),
    defaultQuery,
    defaultHeaders: '{\n  "Authorization": "Bearer <token>"\n}',
    shouldPersistHeaders: true,
  }),
);
