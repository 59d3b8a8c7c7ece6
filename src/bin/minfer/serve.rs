//! `minfer serve`: load the model for `--parallel` sequences and run the HTTP server until the
//! process is stopped. The address is printed on stderr (the real port when `--port 0`).

use minfer::server::{ServeOptions, Server};
use minfer::{LoadOptions, Model};

use crate::args::ServeArgs;
use crate::options::load_options;
use crate::{note, Res};

pub fn serve(a: &ServeArgs) -> Res {
    let opts = LoadOptions {
        max_seqs: a.parallel,
        ..load_options(&a.load)?
    };
    let model = Model::load(&a.model, &opts)?;
    let ctx = model.context_len();
    let backend = model.backend_name();
    let serve = ServeOptions {
        host: a.host.clone(),
        port: a.port,
        model_name: a.alias.clone(),
        max_waiting: a.queue,
        prefix_cache: !a.no_prefix_cache,
        ..ServeOptions::default()
    };
    let server = Server::start(model, &serve)?;
    note!(
        "minfer serve: {} on http://{} ({backend}, {} parallel, context {ctx} per sequence)",
        server.model_name(),
        server.local_addr(),
        a.parallel,
    );
    server.wait()?;
    Ok(())
}
