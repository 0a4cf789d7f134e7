"""The labelled set the routing classifier learns from (route_classifier.py): user prompts an operator would
call simple (a small model answers them as well as a big one: greetings, thanks, short lookups, one-line
translations and conversions) or complex (reasoning, code, analysis, long writing). Written for this project;
tests/controlplane/gateway/test_route_classifier.py holds out every fifth prompt to measure accuracy."""

from __future__ import annotations

SIMPLE: tuple[str, ...] = (
    "hi", "hello", "hey there", "good morning", "good evening!", "hi, how are you?", "hello, anyone there?",
    "thanks", "thank you!", "thanks a lot", "thank you so much for the help", "cheers, that worked",
    "ok", "okay thanks", "great, thanks", "perfect", "got it", "bye", "goodbye", "see you later",
    "yes", "no", "sure", "sounds good", "nice", "cool, thanks!", "that's all for now", "you're welcome",
    "what time is it in Tokyo?", "what is the capital of France?", "capital of Japan?",
    "what is the capital of Canada", "who wrote Hamlet?", "who painted the Mona Lisa?",
    "how many days are in a leap year?", "how many legs does a spider have?", "what color is the sky?",
    "what is 2 + 2?", "what is 7 times 8?", "what is 15% of 200?", "what's 100 divided by 4?",
    "how many minutes in an hour?", "how many centimeters in an inch?", "convert 5 km to miles",
    "convert 100 fahrenheit to celsius", "how many ounces in a pound?", "what is the boiling point of water?",
    "translate 'hello' to Spanish", "translate good morning into French", "translate 'thank you' to German",
    "how do you say cat in Italian?", "translate 'where is the station' to Japanese",
    "what does 'bonjour' mean?", "translate 'I love you' into Portuguese", "say goodbye in Dutch",
    "spell necessary", "how do you spell rhythm?", "what is a synonym for happy?", "antonym of cold?",
    "define serendipity", "what does 'ephemeral' mean?", "meaning of the word 'ubiquitous'",
    "plural of mouse?", "past tense of run", "is 'alot' a word?", "what is the opposite of ancient?",
    "what year did World War II end?", "when was the Eiffel Tower built?", "who is the author of 1984?",
    "what is the largest ocean?", "what is the tallest mountain in the world?", "how far is the moon?",
    "what is the chemical symbol for gold?", "what is H2O?", "how many continents are there?",
    "what language is spoken in Brazil?", "what currency does Japan use?", "what is the speed of light?",
    "is a tomato a fruit?", "is the sun a star?", "do penguins fly?", "are whales mammals?",
    "what day comes after Monday?", "how many weeks in a year?", "what month has 28 days?",
    "tell me a joke", "tell me a fun fact", "give me a random number between 1 and 10",
    "flip a coin", "pick a color", "say something nice", "recommend a movie", "name a fruit",
    "what's your name?", "who are you?", "are you a robot?", "can you hear me?", "are you there?",
    "what is the square root of 81?", "what is 12 squared?", "is 17 a prime number?", "what is pi?",
    "round 3.14159 to two decimals", "what is half of 50?", "what is 9 minus 3?", "add 45 and 55",
    "what is the weather like on Mars?", "how hot is the sun?", "what is the freezing point of water?",
    "list three primary colors", "name the days of the week", "name the planets", "list four seasons",
    "what rhymes with cat?", "give me a word that rhymes with moon", "what is an adjective?",
    "capitalize this: hello world", "uppercase 'llmctl'", "reverse the word 'stressed'",
    "what is the abbreviation for kilogram?", "what does CPU stand for?", "what does NASA stand for?",
    "what does HTTP stand for?", "what is RAM?", "what is a noun?", "what is the plural of goose?",
    "how old is the universe?", "how many bones in the human body?", "how many teeth do adults have?",
    "what sound does a cow make?", "what do bees make?", "what is the largest animal?",
    "good night", "have a nice day", "happy birthday!", "merry christmas", "congrats!", "well done",
    "translate 'cheese' to French", "what is 'water' in Spanish?", "how do you say thank you in Korean?",
    "thanks, bye", "hello again", "hi! quick question: what's 3 + 5?", "sorry, typo", "never mind",
    "what's the date today?", "what is the population of Paris?", "who discovered penicillin?",
    "which planet is closest to the sun?", "how many players on a soccer team?", "what is a haiku?",
    # Longer, still simple: politeness and context around a lookup, a one-line translation or a greeting.
    "Hi! I just wanted to say thank you so much for your help yesterday, the printer works again.",
    "Hello there, I hope you are having a good day. Could you tell me what the capital of Australia is?",
    "Could you please translate the following sentence into Spanish for me: where is the nearest train station?",
    "Good morning! Quick one before my meeting: how many feet are there in a mile?",
    "Thanks again for the answer earlier, that was exactly what I needed. Have a great weekend!",
    "I was chatting with my friend and we could not agree: is a whale a fish or a mammal?",
    "My daughter asked me this at dinner and I did not know: how many planets are in the solar system?",
    "Please translate 'the meeting is moved to Thursday afternoon' into German, thank you.",
    "Hey, sorry to bother you again, but what is the French word for strawberry?",
    "Just checking in to say hello and thanks for all the help with my homework this week.",
    "Could you remind me what the chemical symbol for sodium is? I always forget it.",
    "I am writing a birthday card for my grandmother, how do you say happy birthday in Italian?",
    "What is the boiling point of water in Fahrenheit? I need it for a recipe I am following.",
    "Can you tell me who was the first person to walk on the moon? My son wants to know.",
    "Hello, hello! Is this thing working? Just testing whether you can read my messages.",
    "Thank you, that answer was perfect and really clear. I do not have any other questions today.",
    "Translate into Japanese please: good evening, nice to meet you, my name is Anna.",
    "Please convert 250 grams into ounces, I am baking and my scale only shows ounces.",
    "How many hours are there in a week? I am trying to plan my study schedule roughly.",
    "Which is bigger, a kilometer or a mile? I always mix them up when I travel.",
)

COMPLEX: tuple[str, ...] = (
    # Short, still complex: a few words that ask for reasoning, code or design.
    "prove Fermat's little theorem", "design Twitter's backend", "write a compiler for Lisp",
    "implement a red-black tree", "explain general relativity", "refactor my entire codebase",
    "why did the Soviet Union collapse?", "derive Euler's formula", "write a sorting algorithm in assembly",
    "solve x^3 - 6x^2 + 11x - 6 = 0", "explain monads", "design a distributed lock",
    "optimize my SQL schema", "debug my segfault", "explain backpropagation", "write an OS kernel scheduler",
    "critique Rawls' theory of justice", "implement Raft in Go", "explain P vs NP", "build a neural network from scratch",
    "compare capitalism and socialism", "write a novel outline", "explain CRDTs", "analyze this contract for risks",
    "prove the Pythagorean theorem", "implement a JSON parser", "explain quantum computing", "design a search engine",
    "Write a Python function that parses a CSV file, groups the rows by customer id, and returns the total "
    "spend per customer, handling malformed rows gracefully.",
    "Explain the difference between optimistic and pessimistic locking in databases, with examples of when "
    "each is the better choice.",
    "Prove that the square root of 2 is irrational.",
    "Design a rate limiter for a multi-tenant API gateway that supports requests per minute and tokens per "
    "minute. Discuss the data structures and the trade-offs.",
    "Compare the economic policies of Keynesian and Austrian schools of thought and evaluate their "
    "predictions about the 2008 financial crisis.",
    "Write a 1000-word short story about a lighthouse keeper who discovers a message in a bottle.",
    "Debug this code: my recursive Fibonacci function in JavaScript runs out of stack for n = 10000. How "
    "should I rewrite it and why?",
    "Summarize the main arguments of Kant's Critique of Pure Reason and explain how they respond to Hume.",
    "I have a React app where the list re-renders on every keystroke. Walk me through diagnosing and fixing "
    "the performance problem.",
    "Derive the formula for the variance of a binomial distribution step by step.",
    "Write a SQL query that finds, for each department, the employee with the highest salary, including ties, "
    "and explain how it works.",
    "Analyze the themes of guilt and redemption in Dostoevsky's Crime and Punishment.",
    "Explain how a transformer's attention mechanism works, including the role of queries, keys and values, "
    "and why it scales quadratically with sequence length.",
    "Plan a two-week itinerary for Japan for a family with two young children on a moderate budget, "
    "balancing cities and nature.",
    "What are the trade-offs between microservices and a monolith for a startup of five engineers? Give a "
    "recommendation and justify it.",
    "Write a bash script that watches a directory, compresses new log files older than a day, and uploads "
    "them to S3 with retries.",
    "Solve the system of equations 3x + 2y - z = 1, 2x - 2y + 4z = -2, -x + 0.5y - z = 0 and show each step.",
    "Explain why the sky is blue, covering Rayleigh scattering and why sunsets are red, at the level of an "
    "undergraduate physics course.",
    "Refactor this class so that it follows the single responsibility principle and is easier to unit test; "
    "explain each change.",
    "Draft a cover letter for a senior backend engineer position that highlights distributed systems "
    "experience and leadership.",
    "How does TCP congestion control work? Compare Reno, Cubic and BBR.",
    "Write a unit test suite in pytest for a function that validates email addresses, covering edge cases.",
    "Explain the causes of the French Revolution and how they interacted, in about 800 words.",
    "Given a graph with weighted edges, implement Dijkstra's algorithm in C++ and analyze its complexity with "
    "a binary heap versus a Fibonacci heap.",
    "My Kubernetes pods keep getting OOMKilled even though memory limits look generous. What could be going "
    "on and how do I investigate?",
    "Critically evaluate the evidence for and against a four-day work week, citing the kinds of studies that "
    "exist and their limitations.",
    "Write a detailed product requirements document for a mobile app that helps people split bills.",
    "Explain the CAP theorem and how systems like Cassandra, Spanner and DynamoDB position themselves "
    "relative to it.",
    "Translate this paragraph into French, keeping the legal meaning precise: The lessee shall indemnify the "
    "lessor against all claims arising from the use of the premises during the term of the lease.",
    "Outline a machine learning pipeline to detect fraudulent credit card transactions, including feature "
    "engineering, class imbalance handling and evaluation metrics.",
    "What would happen to Earth's climate if the Moon disappeared? Reason through the effects step by step.",
    "Write a Rust program that reads lines from stdin concurrently processes them with a thread pool and "
    "writes results in the original order.",
    "Explain the proof of Cantor's diagonal argument and why it shows the reals are uncountable.",
    "Compare PostgreSQL and MySQL for a write-heavy analytics workload and recommend indexing strategies.",
    "Help me design a database schema for a library system with books, members, loans, reservations and fines.",
    "Why does my neural network's validation loss go up while training loss goes down? List the causes and "
    "the experiments to tell them apart.",
    "Write an essay arguing for and against universal basic income, then give your own balanced conclusion.",
    "Implement an LRU cache in Go with O(1) get and put, safe for concurrent use, and explain the design.",
    "Explain how public key cryptography works and walk through an RSA example with small primes.",
    "Review this pull request description and suggest how to split the change into smaller reviewable "
    "commits: it adds caching, changes the API and migrates the database.",
    "Describe the process of photosynthesis in detail, including the light-dependent reactions and the "
    "Calvin cycle.",
    "Create a marketing strategy for launching an open source developer tool, with channels, messaging, "
    "metrics and a 90-day timeline.",
    "Calculate the monthly payment on a 30-year mortgage of $400,000 at 6.5% interest and explain the "
    "amortization schedule.",
    "Explain the differences between processes and threads, and between preemptive and cooperative "
    "multitasking, with examples from Linux and Python asyncio.",
    "Write a Dockerfile and a docker-compose setup for a Django app with PostgreSQL, Redis and Celery "
    "workers, with production-grade settings.",
    "Analyze the time complexity of quicksort in the best, average and worst cases and explain how "
    "randomized pivots help.",
    "What are the ethical concerns with facial recognition in public spaces? Discuss privacy, bias and "
    "governance, and propose safeguards.",
    "Walk me through how a compiler turns source code into machine code: lexing, parsing, semantic "
    "analysis, optimization and code generation.",
    "Write a regex that validates IPv4 addresses exactly, then explain every part of it and its limitations.",
    "I'm getting a deadlock between two transactions in PostgreSQL. Here is the log. Explain what happened "
    "and how to restructure the code to avoid it.",
    "Summarize this 20-page research paper on protein folding and list its three main contributions and "
    "weaknesses.",
    "Design the architecture of a real-time multiplayer game server that supports 10,000 concurrent players "
    "with low latency.",
    "Explain Bayes' theorem with a medical testing example and show why base rates matter.",
    "Write a function that merges overlapping intervals, prove it is correct, and give its complexity.",
    "How should a small team set up CI/CD for a monorepo with Python and TypeScript services? Be specific "
    "about caching, test selection and deployment.",
    "Compare the leadership styles of Lincoln and Churchill during wartime and what modern managers can "
    "learn from them.",
    "Explain quantum entanglement without hand-waving and discuss why it does not allow faster-than-light "
    "communication.",
    "Write a Terraform module that provisions a VPC with public and private subnets, NAT gateways and "
    "flow logs, and explain the variables.",
    "Given these quarterly sales numbers, forecast the next four quarters and explain which model you chose "
    "and why.",
    "Explain how garbage collection works in the JVM, comparing G1, ZGC and Shenandoah.",
    "Write a persuasive speech for a city council meeting about building protected bike lanes downtown.",
    "Break down the steps to migrate a large production database from MySQL to PostgreSQL with minimal "
    "downtime.",
    "Explain the halting problem and sketch the proof that it is undecidable.",
    "My startup's churn went from 3% to 7% in two months. Propose hypotheses, the data to check each, and "
    "an action plan.",
    "Implement a trie in Python that supports insert, search, prefix listing and deletion, with tests.",
    "Discuss the causes and consequences of the fall of the Western Roman Empire, weighing the main "
    "historical theories.",
    "Explain how HTTPS works end to end, from DNS resolution through the TLS handshake to the encrypted "
    "request.",
    "Write a detailed lesson plan for teaching fractions to fourth graders, with activities and assessments.",
    "Optimize this slow pandas code that loops over rows to compute rolling statistics per group, and "
    "explain the speedup.",
    "Explain the differences between supervised, unsupervised and reinforcement learning with real-world "
    "examples and typical algorithms.",
    "Write a technical blog post about lessons learned from a production outage caused by a cache stampede.",
    "Compute the eigenvalues and eigenvectors of the matrix [[2, 1], [1, 2]] and interpret them "
    "geometrically.",
    "Explain how vaccines train the immune system, covering mRNA vaccines and traditional ones.",
    "Write a state machine in TypeScript for an order workflow with payment, shipping, cancellation and "
    "refunds, with type-safe transitions.",
    "Evaluate the pros and cons of nuclear power as part of a decarbonization strategy, with numbers where "
    "possible.",
    "How would you detect and mitigate a memory leak in a long-running Node.js service? Describe tools and "
    "steps.",
    "Explain the Monty Hall problem and prove the answer using conditional probability.",
    "Write a complete README for an open source CLI tool, including installation, usage examples, "
    "configuration and contributing guidelines.",
    "Describe how to build a recommendation system for an e-commerce site, from cold start to collaborative "
    "filtering to evaluation.",
    "Explain the difference between concurrency and parallelism and when async IO helps or hurts "
    "performance.",
    "Draft a data retention policy for a SaaS company that complies with GDPR, listing data categories and "
    "retention periods.",
    "Explain the proof that there are infinitely many prime numbers and then discuss the prime number "
    "theorem.",
    "Create a workout plan for a beginner training for a half marathon in 16 weeks, with progression and "
    "recovery.",
    "Write a Python script that scrapes a paginated website politely, respects robots.txt, retries on "
    "errors and stores results in SQLite.",
    "Explain how the Federal Reserve controls inflation and the transmission mechanism of interest rates to "
    "the economy.",
    "What are the trade-offs between GraphQL and REST for a public API with many third-party clients?",
    "Analyze the strengths and weaknesses of this business plan for a coffee subscription service and "
    "suggest improvements.",
    "Explain the Byzantine generals problem and how practical BFT and proof-of-stake protocols address it.",
    "Write a function to detect a cycle in a linked list, explain Floyd's algorithm and prove why it works.",
    "Explain the main differences between Python 2 and Python 3 and plan a migration for a 200k-line "
    "codebase.",
    "Discuss how social media algorithms affect political polarization, considering the evidence on both "
    "sides.",
    "Design an experiment to test whether a new onboarding flow improves retention, including sample size "
    "and pitfalls.",
    "Explain how a B-tree index works and why databases prefer it over a binary search tree on disk.",
    "Write a long-form poem in the style of Walt Whitman about a modern city at night.",
    "Given a list of tasks with dependencies, write code for topological sorting and detect cycles, with an "
    "explanation.",
    "Explain the differences between TCP and UDP and design a reliable protocol on top of UDP for game state.",
    "Describe the lifecycle of a star from nebula to its possible end states and what determines the path.",
    "Help me prepare for a system design interview: design a URL shortener that handles a billion links.",
    "Explain how speculative decoding speeds up LLM inference and when it does not help.",
    "Write an async Python client with retries, timeouts, backoff and circuit breaking for a flaky HTTP API.",
    "Compare three approaches to state management in large frontend apps and recommend one for a team of 20.",
    "Explain the mathematics behind gradient descent, momentum and Adam, and when each converges faster.",
    "Write a Go HTTP middleware that logs requests with structured fields, propagates trace ids and "
    "recovers from panics.",
    "Explain why the 2003 Northeast blackout happened and what changed in grid operations afterwards.",
    "Given my symptoms of fatigue, weight gain and feeling cold, what conditions could explain them and "
    "which tests would a doctor order?",
    "Derive the backpropagation equations for a two-layer neural network with a softmax output.",
    "Write a migration plan to move a company's on-premise file servers to cloud storage with access "
    "controls preserved.",
    "Explain the trade-offs between strong and eventual consistency in a shopping cart service.",
    "Write a cover letter and a follow-up email for a career change from teaching to UX research.",
    "Explain how to price a European call option with the Black-Scholes model and what its assumptions "
    "imply.",
    "How do I make my Python package support both sync and async users without duplicating all the code?",
    "Write a critique of the film Inception focusing on its narrative structure and use of sound.",
    "Explain the role of mitochondria in cellular respiration and how the electron transport chain produces "
    "ATP.",
    "Build a simple interpreter for arithmetic expressions with variables in Python, including a tokenizer "
    "and parser.",
    "Explain what causes inflation to persist and compare the 1970s with the 2020s.",
    "Design a logging and monitoring strategy for a fleet of GPU inference servers, including alerts and "
    "dashboards.",
    "Explain the difference between a process's virtual memory and physical memory, page tables and TLBs.",
    "Compare the philosophies of Stoicism and Epicureanism and how they would advise someone facing job loss.",
    "Write a function to find the longest palindromic substring and compare the dynamic programming and "
    "Manacher approaches.",
    "Explain how to choose between fine-tuning and retrieval augmented generation for a customer support bot.",
    "Write a grant proposal summary for a community garden project, including goals, budget and impact.",
    "Explain how consensus works in Raft, including leader election, log replication and safety.",
    "Walk me through setting up end-to-end encryption for a chat app, including key exchange and forward "
    "secrecy.",
    "Analyze why this SQL query is slow given its EXPLAIN output and propose indexes and a rewrite.",
    "Explain the theory of evolution by natural selection and address three common misconceptions.",
    "Write a Kubernetes operator design for managing database backups with schedules and retention.",
    "Discuss the long-term effects of remote work on cities, real estate and company culture.",
    "Explain how JPEG compression works, from color space conversion to the discrete cosine transform and "
    "quantization.",
    "Write a detailed code review of this Python module, pointing out bugs, style issues and design "
    "problems.",
    "Plan the rollout of a new pricing model to existing customers, with communication, grandfathering and "
    "risk analysis.",
    "Explain how KV caching works in transformer inference and how paged attention reduces fragmentation.",
    "Write a parser for a subset of JSON in C without using libraries and explain its error handling.",
)
